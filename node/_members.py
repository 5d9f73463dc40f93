"""Membership over HTTP: add a learner as a voter, remove a member (this node too), and
the state of a node that was removed.

- ``POST /v1/cluster/members`` takes the cluster-wide membership lease
  (``ReplicatedStore.membership_lease``), checks that the new node runs as a learner
  (``rdbsync node --join``) at ``http_url`` with that Raft address and is caught up
  (``rdb.caught_up``), then proposes it as a voter. The leader still refuses a change
  while another membership entry is uncommitted (``rdb._raft_membership``).
- ``DELETE /v1/cluster/members/{id}`` for *this* node is handed to another member
  (the leader drops a removed node at once, so no answer could come back here); once
  it succeeds, this node marks itself removed: it answers 410 ``removed_from_cluster``
  (``/readyz`` 503), says so in ``/v1/status`` and its log, keeps a marker file in its
  data directory (a restart stays removed) and stops listening on the shared cluster
  address.

Threading: the asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from node._common import CLIENT, CONFIG, MEMBERS_PREFIX, STORE, json_body, members_registry
from node._exceptions import ApiError
from node._logging import log_event
from node._models import MemberBody
from rdb import caught_up, check_new_member

log = logging.getLogger("node.members")

REMOVED_MARKER = "removed"
#: Paths a removed node still answers: it says it is out, and can be inspected.
_STILL_SERVED = frozenset({"/healthz", "/v1/status", "/metrics", "/v1/events", "/openapi.json"})


@dataclass
class Removal:
    """Whether this node was removed from the cluster, and what to do when it is."""

    removed: bool = False
    reason: str = ""
    at: float = 0.0
    on_removed: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


REMOVAL = web.AppKey("removal", Removal)


def init_removal(app: web.Application) -> None:
    """Install the removal state; a node whose data directory holds the marker starts removed."""
    removal = Removal()
    path = os.path.join(app[CONFIG].data_dir, REMOVED_MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            removal.reason = f.read().strip() or "removed from the cluster"
        removal.removed, removal.at = True, os.path.getmtime(path)
        log_event(log, logging.WARNING, "node_removed_earlier", reason=removal.reason, rejoin=f"remove {path}")
    except FileNotFoundError:
        pass
    app[REMOVAL] = removal


def removal_status(app: web.Application) -> dict[str, Any]:
    removal = app[REMOVAL]
    return {"removed": removal.removed, **({"removed_reason": removal.reason} if removal.removed else {})}


async def mark_removed(app: web.Application, reason: str) -> None:
    """This node is no longer a member: stop serving, persist it, run the hooks."""
    removal = app[REMOVAL]
    if removal.removed:
        return
    removal.removed, removal.reason, removal.at = True, reason, time.time()
    path = os.path.join(app[CONFIG].data_dir, REMOVED_MARKER)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(reason + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        log_event(log, logging.ERROR, "removal_marker_not_written", path=path, error=str(exc))
    log_event(log, logging.WARNING, "node_removed", reason=reason, serving=False)
    for hook in removal.on_removed:
        try:
            await hook()
        except Exception as exc:  # noqa: BLE001 - logged; the other hooks still run
            log_event(log, logging.ERROR, "removal_hook_failed", exc_info=exc, error=repr(exc))


def refuse_if_removed(request: web.Request) -> None:
    """Raises ``ApiError`` (410, or 503 for /readyz) once this node was removed from the
    cluster, for every path but the few still served (loop thread; a check of the node's
    one front middleware)."""
    removal = request.app[REMOVAL]
    if removal.removed and request.path not in _STILL_SERVED:
        status = 503 if request.path == "/readyz" else 410
        raise ApiError(
            status,
            "removed_from_cluster",
            f"this node was removed from the cluster ({removal.reason}); ask another member",
            {"removed_at": removal.at},
            applied=False if request.method not in ("GET", "HEAD") else None,
        )


def _headers(app: web.Application) -> dict[str, str]:
    token = app[CONFIG].api_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def _answer(body: dict[str, Any], revision: int) -> web.Response:
    return web.json_response(body, headers={"X-Rdb-Revision": str(revision)})


# ---------------------------------------------------------------- add


async def add_member(request: web.Request) -> web.Response:
    app = request.app
    body = await json_body(request, MemberBody)
    store = app[STORE]
    members = store.status().members
    # Syntax, DNS (off the loop: a resolver can take seconds), duplicates and aliases.
    await asyncio.to_thread(check_new_member, body.raft_address, members)
    if any(m.get("id") == body.id and addr in members for addr, m in members_registry(app).items()):
        raise ApiError(409, "duplicate_id", f"a member with id {body.id!r} exists", applied=False)
    cfg = app[CONFIG]
    async with store.membership_lease(cfg.id, f"add {body.id} {body.raft_address}"):
        await _wait_for_learner(app, body)
        await store.put(MEMBERS_PREFIX + body.id, body.model_dump())
        await store.change_membership("add", body.raft_address)
        # The change is over once the new member votes (its learner restarted as a
        # voter): only then may the next one start.
        voting = await _wait_for_voter(app, body)
    log_event(log, logging.INFO, "member_added", member=body.id, raft_address=body.raft_address, voting=voting)
    return _answer({"added": body.model_dump(), "voting": voting}, store.revision)


async def _wait_for_voter(app: web.Application, body: MemberBody) -> bool:
    """Wait, up to the request timeout, for the new member to report a voter's role."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app[STORE].request_timeout
    while loop.time() < deadline:
        try:
            async with app[CLIENT].get(
                f"{body.http_url.rstrip('/')}/v1/status",
                headers=_headers(app),
                timeout=aiohttp.ClientTimeout(total=1.0),
            ) as resp:
                status: dict[str, Any] = await resp.json()
            if status.get("role") in ("follower", "leader") and status.get("leader") is not None:
                return True
        except Exception:  # noqa: BLE001 - restarting its Raft node: ask again
            pass
        await asyncio.sleep(0.05)
    return False


async def _wait_for_learner(app: web.Application, body: MemberBody) -> None:
    """Return once the node at ``body.http_url`` is a learner with ``body.raft_address``
    following our leader, its applied index close to our commit index. Raises 422
    ``member_unreachable`` (it never answered), 422 ``invalid_member`` (it answered
    but is not that learner) or 503 ``member_not_caught_up``, all before anything is
    proposed."""
    loop = asyncio.get_running_loop()
    store = app[STORE]
    deadline = loop.time() + store.request_timeout
    url = f"{body.http_url.rstrip('/')}/v1/status"
    answered, problem = False, "no answer yet"
    while True:
        try:
            async with app[CLIENT].get(url, headers=_headers(app), timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                status: dict[str, Any] = await resp.json()
        except Exception as exc:  # noqa: BLE001 - any failure: not reachable (yet)
            problem = str(exc) or type(exc).__name__
        else:
            answered = True
            if status.get("raft_address") != body.raft_address:
                raise ApiError(
                    422,
                    "invalid_member",
                    f"the node at {body.http_url} has the Raft address {status.get('raft_address')!r}, "
                    f"not {body.raft_address!r}",
                    {"reason": "address_mismatch"},
                    applied=False,
                )
            if status.get("role") != "learner":
                raise ApiError(
                    422,
                    "invalid_member",
                    f"the node at {body.http_url} is not a learner (role {status.get('role')!r}): "
                    "start it with `rdbsync node --join` and the members as --peer",
                    {"reason": "not_a_learner"},
                    applied=False,
                )
            ours = store.status()
            applied = int(status.get("applied_index", 0))
            # The leader's commit index as this node last heard it (its own, on the leader).
            commit = max(ours.commit_index, ours.leader_commit_index or 0)
            if status.get("leader_raft_address") == ours.leader and caught_up(applied, commit):
                return
            problem = f"learner applied {applied} of {commit}, following {status.get('leader')!r}"
        if loop.time() >= deadline:
            if not answered:
                raise ApiError(
                    422,
                    "member_unreachable",
                    f"{body.http_url} did not answer ({problem}); start the new node with --join first",
                    applied=False,
                )
            raise ApiError(
                503, "member_not_caught_up", f"the learner did not catch up in time: {problem}", applied=False
            )
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------- remove


async def remove_member(request: web.Request) -> web.Response:
    app = request.app
    member_id = request.match_info["id"]
    store = app[STORE]
    cfg = app[CONFIG]
    members = set(store.status().members)
    registry = members_registry(app)
    match = [a for a, m in registry.items() if m.get("id") == member_id and a in members]
    if not match:
        raise ApiError(404, "not_found", f"no member with id {member_id!r}", applied=False)
    if len(members) <= 1:
        raise ApiError(409, "last_member", "cannot remove the last member", applied=False)
    address = match[0]
    if address == cfg.raft_address:
        return await _remove_self(app, member_id, members, registry)
    async with store.membership_lease(cfg.id, f"remove {member_id} {address}"):
        await store.change_membership("remove", address)
        await store.delete(MEMBERS_PREFIX + member_id)
    log_event(log, logging.INFO, "member_removed", member=member_id, raft_address=address)
    told = await _tell_removed(app, registry[address])
    return _answer({"removed": member_id, "told": told}, store.revision)


async def _tell_removed(app: web.Application, member: dict[str, str]) -> bool:
    """Tell a removed node that it is out (the leader stopped talking to it at once, so
    Raft never will). Best effort: False if it could not be told."""
    url = member.get("http_url")
    if not url:
        return False
    try:
        async with app[CLIENT].post(
            f"{url.rstrip('/')}/v1/cluster/removed",
            json={"by": app[CONFIG].id},
            headers=_headers(app),
            timeout=aiohttp.ClientTimeout(total=2.0),
        ) as resp:
            return resp.status == 200
    except Exception as exc:  # noqa: BLE001 - it may be down: it learns on its next removal check
        log_event(log, logging.INFO, "removed_member_not_told", member=member.get("id"), error=str(exc))
        return False


async def removed_notice(request: web.Request) -> web.Response:
    """``POST /v1/cluster/removed {"by": ID}``: a member says this node was removed.
    Believed only once that member, found in this node's own registry, reports a
    quorum and a member list without this node."""
    app = request.app
    body = await json_body(request)
    by = body.get("by") if isinstance(body, dict) else None
    peer = next((m for m in members_registry(app).values() if m.get("id") == by), None)
    if peer is None or by == app[CONFIG].id or not peer.get("http_url"):
        raise ApiError(422, "unknown_member", f"{by!r} is not a member this node knows", applied=False)
    try:
        async with app[CLIENT].get(
            f"{peer['http_url'].rstrip('/')}/v1/status", headers=_headers(app), timeout=aiohttp.ClientTimeout(total=2.0)
        ) as resp:
            status: dict[str, Any] = await resp.json()
    except Exception as exc:  # noqa: BLE001 - cannot check: do not believe it
        raise ApiError(503, "unverified", f"cannot check with {by}: {exc}", applied=False) from None
    theirs = {m.get("raft_address") for m in status.get("members", [])}
    if not status.get("quorum") or app[CONFIG].raft_address in theirs:
        raise ApiError(409, "still_member", f"{by} does not confirm that this node was removed", applied=False)
    await mark_removed(app, f"removed through {by}")
    return web.json_response({"removed": True})


async def _remove_self(
    app: web.Application, member_id: str, members: set[str], registry: dict[str, dict[str, str]]
) -> web.Response:
    """Have another member remove this node (the leader first, if it is not us), then
    mark this node removed. Passes the other member's error through."""
    store = app[STORE]
    leader = store.status().leader
    others = [a for a in sorted(members) if a != app[CONFIG].raft_address and registry.get(a, {}).get("http_url")]
    others.sort(key=lambda a: a != leader)
    if not others:
        raise ApiError(503, "no_member_reachable", "no other member with a known HTTP URL", applied=False)
    last: ApiError | None = None
    for address in others:
        peer = registry[address]
        url = f"{peer['http_url'].rstrip('/')}/v1/cluster/members/{member_id}"
        try:
            async with app[CLIENT].delete(
                url, headers=_headers(app), timeout=aiohttp.ClientTimeout(total=3 * store.request_timeout + 5)
            ) as resp:
                body: Any = await resp.json()
                status = resp.status
        except Exception as exc:  # noqa: BLE001 - try the next member
            last = ApiError(503, "no_member_reachable", f"{peer['id']} did not answer: {exc}", applied="unknown")
            continue
        if status == 200:
            await mark_removed(app, f"removed through {peer['id']}")
            return _answer({"removed": member_id, "through": peer["id"]}, store.revision)
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise ApiError(
            status,
            str(error.get("code", "unavailable")),
            f"{peer['id']}: {error.get('message', 'the removal failed')}",
            error.get("details") or {},
            applied=error.get("applied"),
        )
    assert last is not None
    raise last
