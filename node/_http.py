"""The aiohttp application of one node: the key-space API, status, membership, ops.

Threading: every handler runs on the node's asyncio loop. Handlers raise; the error
middleware is the single place that turns exceptions into HTTP answers
(``node._errors.translate``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from node._agent_routes import add_agent_routes
from node._common import (
    CLIENT,
    CONFIG,
    MAX_BODY_BYTES,
    MAX_LIST_LIMIT,
    MEMBERS_PREFIX,
    REQUEST_OBSERVER,
    RESERVED_PREFIX,
    RUNTIME,
    STORE,
    WATCH_KEEPALIVE_SECONDS,
    consistent_read,
    dump_json,
    int_param,
    json_body,
    last_event_id,
    members_registry,
    path_problem,
    read_body,
    request_id,
)
from node._config import NodeConfig
from node._debug import add_debug_routes
from node._errors import check_write_result, error_response, translate
from node._exceptions import ApiError
from node._front import KeyFront, front_works
from node._members import (
    add_member,
    init_removal,
    refuse_if_removed,
    removal_status,
    remove_member,
    removed_notice,
)
from node._mgmt import add_routes, check_row
from node._models import PutBody, TxnBody
from node._observability import install_observability
from node._openapi import openapi
from node._runtime import BladeRuntime
from node._sinks import FileSink
from node._tables import TABLE_PREFIX, TableRegistry, key_problem
from node._ui import ui_auth_exempt
from rdb import Compacted, InvalidCommand, KeyValue, ReplicatedStore, check_key, check_value

log = logging.getLogger("node.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})


# ---------------------------------------------------------------- middlewares


@web.middleware
async def _front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The node's one middleware (each layer costs every request a coroutine): the
    checks (token, removal, framing), then the handler, with every error translated to
    its HTTP answer here, and the request observed for metrics (``REQUEST_OBSERVER``,
    when installed) with the status the client gets (499: it went away)."""
    started = time.perf_counter()
    code = 499
    try:
        response = await _checked_and_translated(request, handler)
        code = response.status
        return response
    finally:
        observer = request.app.get(REQUEST_OBSERVER)
        if observer is not None:
            observer(request, code, time.perf_counter() - started)


async def _checked_and_translated(request: web.Request, handler: Handler) -> web.StreamResponse:
    is_write = request.method in _WRITE_METHODS
    try:
        _check_auth(request)
        refuse_if_removed(request)
        _check_framing(request)
        response = await handler(request)
    except asyncio.CancelledError:
        raise
    except ConnectionError:
        # The client went away mid-answer: nobody to answer, nothing to log as an error.
        log.debug("client %s went away during %s %s", request.remote, request.method, request.path)
        return web.Response(status=499)
    except Exception as exc:  # noqa: BLE001 - the one translation point
        err = translate(exc, is_write=is_write)
        response = error_response(err)
        if err.status == 408:
            response.force_close()  # the rest of a stalled body is not waited for
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    if not response.prepared and "X-Rdb-Revision" not in response.headers:
        response.headers["X-Rdb-Revision"] = str(request.app[STORE].revision)
    return response


def _check_auth(request: web.Request) -> None:
    token = request.app[CONFIG].api_token
    if token and request.path != "/healthz" and not ui_auth_exempt(request, token):
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer ...)")


def _check_framing(request: web.Request) -> None:
    """Refuse what the handlers would misread: a transfer coding other than chunked (the
    body would be read as if plain), a path that breaks the rule for keys in paths."""
    coding = request.headers.get("Transfer-Encoding")
    codings = [c.strip().lower() for c in coding.split(",") if c.strip()] if coding else []
    if codings and codings != ["chunked"]:
        message = f"Transfer-Encoding {', '.join(codings)[:60]!r} is not supported; only chunked is"
        raise ApiError(
            501, "unsupported_transfer_encoding", message, applied=False if request.method in _WRITE_METHODS else None
        )
    problem = path_problem(request.raw_path.partition("?")[0])
    if problem is not None:
        raise ApiError(400, "bad_path", problem, applied=False if request.method in _WRITE_METHODS else None)


# ---------------------------------------------------------------- connections


class _Refused(asyncio.Protocol):
    """A connection over the per-node cap: one 503 and close, before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "too_many_connections",
                    "message": "this node has too many open connections",
                    "details": {},
                }
            }
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        assert isinstance(transport, asyncio.Transport)
        transport.write(head.encode() + body)
        transport.close()


class _Handler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse with our error
    body (not its plain text) and never with a 500."""

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
            err = ApiError(503, "internal", "internal error")
        else:
            log.debug("malformed request from %s: %s", request.remote, exc)
            err = ApiError(status, "bad_request", (message or str(exc) or "malformed request")[:200])
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        response = error_response(err)
        response.force_close()
        return response


#: The resource of the hot path (every read and write of a key): ``_KeyShortcut``.
KEY_ROUTE = "/v1/kv/{key}"
_KEY_PATH_PREFIX = "/v1/kv/"


class _KeyShortcut:
    """The node's request handler, in place of ``Application._handle``: a request under
    ``/v1/kv/`` is matched against the key resource alone and handed to the front
    middleware; every other request (and one with ``Expect``, or one the resource does
    not take) goes the application's own way.

    What the shortcut leaves out is what the node does not use: the router's scan of
    its resources, and the layers ``_handle`` adds per request for sub-applications and
    legacy middlewares. Side by side, it took 18-35 us of CPU off each request on the
    follower taking the load. It is only set up while the application's middlewares are
    exactly the front middleware (otherwise the shortcut would skip one)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.taken = 0  # requests the shortcut served (tests check that it is in use)
        resources = [r for r in app.router.resources() if r.canonical == KEY_ROUTE]
        usable = len(resources) == 1 and tuple(app.middlewares) == (_front_middleware,)
        self.resource = resources[0] if usable else None

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        resource = self.resource
        if resource is not None and request.path.startswith(_KEY_PATH_PREFIX) and hdrs.EXPECT not in request.headers:
            assert isinstance(request, web.Request)  # the application's request factory made it
            match_info, _ = await resource.resolve(request)
            if match_info is not None:
                match_info.add_app(self.app)
                match_info.freeze()
                request._match_info = match_info  # as ``_handle`` does
                self.taken += 1
                return await _front_middleware(request, match_info.handler)
        return await self.app._handle(request)  # type: ignore[arg-type]


class _Server(web.Server):
    """Caps open connections: one over ``max_connections`` is answered 503 and closed.
    A connection starts on ``KeyFront`` (``node._front``), which serves plain key
    requests itself and hands anything else to aiohttp's protocol (``_Handler``); both
    dispatch through ``_KeyShortcut``. ``front_enabled`` False (tests, or an aiohttp the
    front fails its check on: ``front_works``) starts every connection on aiohttp's
    protocol."""

    def __init__(self, base: web.Server, app: web.Application, max_connections: int) -> None:
        self.shortcut = _KeyShortcut(app)
        super().__init__(
            self.shortcut,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.max_connections = max_connections
        self.refused = 0
        self.front_enabled = True
        problem = front_works(self)
        if problem is not None:
            self.front_enabled = False
            log.warning("every request goes through aiohttp's protocol: the key front fails its check (%s)", problem)
        self.handed_over = 0  # connections KeyFront gave to aiohttp's protocol
        self.front_served = 0  # requests KeyFront answered, on connections it no longer has
        self._fronts: set[KeyFront] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        # aiohttp's keep-alive time (build_app sets it to header_timeout), and how often
        # the one sweep of the front connections runs: a quarter of it.
        self._keepalive = float(self._kwargs.get("keepalive_timeout", 30.0))
        self._sweep_period = min(5.0, max(0.05, self._keepalive / 4))

    def __call__(self) -> RequestHandler:
        if len(self._connections) + len(self._fronts) >= self.max_connections:
            self.refused += 1
            return _Refused()  # type: ignore[return-value]
        if self.front_enabled:
            return KeyFront(self)  # type: ignore[return-value]
        return self.aiohttp_protocol()

    # ---------------------------------------------------------- what KeyFront calls

    def serve_key_request(self, request: web.Request) -> Awaitable[web.StreamResponse]:
        return self.shortcut(request)

    def aiohttp_protocol(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def front_opened(self, front: KeyFront) -> None:
        self._fronts.add(front)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._sweep_period, self._sweep)

    def front_closed(self, front: KeyFront) -> None:
        if front in self._fronts:
            self._fronts.discard(front)
            self.front_served += front.served
            if front.handed_over:
                self.handed_over += 1

    def _sweep(self) -> None:
        """Close the front connections idle for the keep-alive time: one timer for all of
        them, not one per request (loop thread)."""
        self._sweeper = None
        since = self._loop.time() - self._keepalive
        for front in list(self._fronts):
            front.close_if_idle(since)
        if self._fronts:
            self._sweeper = self._loop.call_later(self._sweep_period, self._sweep)

    # ---------------------------------------------------------- shutdown

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for front in list(self._fronts):
            front.close()

    async def shutdown(self, timeout: float | None = None) -> None:
        try:
            await asyncio.gather(*(front.shutdown(timeout) for front in list(self._fronts)), super().shutdown(timeout))
        finally:
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, max_connections: int) -> None:
        super().__init__(app, access_log=None, shutdown_timeout=2.0)
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self.app, self._max_connections)


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner to serve ``app`` with: its connections are capped at the node's
    ``max_connections``, a request head must arrive within ``header_timeout`` (set in
    ``build_app``), a body within ``body_timeout`` (``read_body``)."""
    return _Runner(app, app[CONFIG].max_connections)


# ---------------------------------------------------------------- helpers


def _user_key(request: web.Request) -> str:
    key = request.match_info["key"]
    try:
        check_key(key)
    except Exception as exc:  # noqa: BLE001 - InvalidCommand, reported as 422 below
        raise ApiError(422, "invalid_key", str(exc), applied=False) from None
    return key


def _check_writable(request: web.Request, key: str) -> None:
    if key.startswith(RESERVED_PREFIX):
        raise ApiError(422, "reserved_key", f"keys under {RESERVED_PREFIX!r} are reserved for rdbsync", applied=False)
    if key.startswith(TABLE_PREFIX):
        request.app[RUNTIME].check_table_write()  # a node running another app writes no rows


def _checked_value(registry: TableRegistry, key: str, value: Any) -> Any:
    """What a put stores: a key the API can route to again, and, in a management table,
    a row that passes the table's schema."""
    problem = key_problem(key)
    if problem is not None:
        raise ApiError(422, "invalid_key", problem, applied=False)
    table = registry.split_storage_key(key)
    if table is None:
        if key.startswith("tables/"):
            raise ApiError(422, "unknown_table", f"{key!r} is not under a known management table", applied=False)
        return value
    return check_row(table[0], table[1], value)


def _answer(body: Any, revision: int, status: int = 200) -> web.Response:
    headers = {"Content-Type": "application/json; charset=utf-8", "X-Rdb-Revision": str(revision)}
    return web.Response(body=dump_json(body), status=status, headers=headers)


def _kv(kv: KeyValue) -> dict[str, Any]:
    return kv.to_dict()


# ---------------------------------------------------------------- key space


async def get_key(request: web.Request) -> web.Response:
    key = _user_key(request)
    staleness = await consistent_read(request)
    store = request.app[STORE]
    kv = store.get(key)
    revision = store.revision
    if kv is None:
        raise ApiError(404, "not_found", f"key {key!r} does not exist", {"staleness": staleness} if staleness else {})
    body = _kv(kv)
    if staleness:
        body["staleness"] = staleness
    return _answer(body, revision)


async def put_key(request: web.Request) -> web.Response:
    key = _user_key(request)
    _check_writable(request, key)
    prev = int_param(request, "prev_revision")
    value = _checked_value(request.app[RUNTIME].registry, key, _put_value(await json_body(request)))
    result = await request.app[STORE].put(key, value, prev_revision=prev, request_id=request_id(request))
    return _write_answer(result, key)


async def delete_key(request: web.Request) -> web.Response:
    key = _user_key(request)
    _check_writable(request, key)
    prev = int_param(request, "prev_revision")
    result = await request.app[STORE].delete(key, prev_revision=prev, request_id=request_id(request))
    return _write_answer(result, key)


def _put_value(body: Any) -> Any:
    """The value of a PUT body. ``{"value": V}`` (every valid body) skips the model:
    ``PutBody`` accepts any JSON value there, and validating it cost a write about 5 us."""
    if type(body) is dict and len(body) == 1 and "value" in body:
        return body["value"]
    return PutBody.model_validate(body).value


def _write_answer(result: dict[str, Any], key: str) -> web.Response:
    revision = check_write_result(result, f"key {key!r}")
    return _answer({"revision": revision}, revision)


async def list_keys(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix", "")
    limit = int_param(request, "limit", minimum=1, maximum=MAX_LIST_LIMIT) or 1000
    start_after = request.query.get("start_after") or None
    staleness = await consistent_read(request)
    store = request.app[STORE]
    kvs, more = store.range(prefix, start_after=start_after, limit=limit)
    revision = store.revision
    body: dict[str, Any] = {"kvs": [_kv(kv) for kv in kvs], "more": more, "revision": revision}
    if staleness:
        body["staleness"] = staleness
    return _answer(body, revision)


async def txn(request: web.Request) -> web.Response:
    body = await json_body(request, TxnBody)
    branches: list[list[dict[str, Any]]] = [[], []]
    for branch, ops in zip(branches, (body.success, body.failure), strict=True):
        for op in ops:
            item = op.model_dump()
            if op.op != "get":
                _check_writable(request, op.key)
            if op.op == "put":
                item["value"] = _checked_value(request.app[RUNTIME].registry, op.key, op.value)
            branch.append(item)
    result = await request.app[STORE].txn(
        [c.model_dump() for c in body.compare], branches[0], branches[1], request_id=request_id(request)
    )
    revision = check_write_result(result, "the txn")
    return _answer({"succeeded": result["succeeded"], "revision": revision, "responses": result["responses"]}, revision)


async def watch(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    prefix = request.query.get("prefix", "")
    from_revision = int_param(request, "from_revision", minimum=1)
    if from_revision is None:
        last_seen = last_event_id(request)
        from_revision = None if last_seen is None else last_seen + 1
    if from_revision is None:
        from_revision = store.revision + 1
    if from_revision > store.revision + WATCH_AHEAD_LIMIT:
        # Held open it would wait for more writes than the cluster makes in hours: a typo.
        raise ApiError(
            422,
            "bad_parameter",
            f"from_revision {from_revision} is more than {WATCH_AHEAD_LIMIT} beyond this node's"
            f" revision {store.revision}",
            {"revision": store.revision},
        )
    store.events_since(from_revision, prefix)  # raises Compacted -> 410 before the stream starts
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Rdb-Revision": str(store.revision)}
    if request.method == "HEAD":
        return web.Response(headers=headers)  # the stream's head, at once
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    next_revision = from_revision
    while True:
        changed = store.changed()  # taken before reading, so no change slips between
        try:
            events = store.events_since(next_revision, prefix)
        except Compacted as exc:
            await response.write(_sse("compacted", None, {"compacted_revision": exc.compacted}))
            break
        if events:
            chunk = b"".join(_sse(e.type, e.revision, e.to_dict()) for e in events)
            try:
                await response.write(chunk)
            except ConnectionResetError:
                break  # the watcher went away
            next_revision = events[-1].revision + 1
            continue
        try:
            await asyncio.wait_for(changed.wait(), WATCH_KEEPALIVE_SECONDS)
        except TimeoutError:
            try:
                await response.write(b": keepalive\n\n")
            except ConnectionResetError:
                break
    return response


#: A watch may start at most this many revisions beyond the node's current one.
WATCH_AHEAD_LIMIT = 1_000_000


def _sse(event: str, revision: int | None, data: Any) -> bytes:
    head = f"id: {revision}\n" if revision is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# ---------------------------------------------------------------- node and cluster


def node_status(app: web.Application) -> dict[str, Any]:
    cfg = app[CONFIG]
    store = app[STORE]
    st = store.status()
    registry = members_registry(app)

    def name(address: str | None) -> str | None:
        if address is None:
            return None
        return registry.get(address, {}).get("id", address)

    return {
        "id": cfg.id,
        "pid": os.getpid(),
        "http_url": cfg.http_url,
        "raft_address": cfg.raft_address,
        "role": st.role,
        "term": st.term,
        "leader": name(st.leader),
        "leader_raft_address": st.leader,
        "quorum": st.quorum,
        "commit_index": st.commit_index,
        "applied_index": st.applied_index,
        "last_log_index": st.last_index,
        "revision": store.revision,
        "members": [
            {
                "id": name(m),
                "raft_address": m,
                "http_url": registry.get(m, {}).get("http_url"),
                "connected": m == cfg.raft_address or m in st.connected,
            }
            for m in st.members
        ],
        "snapshot_loads": store.load_count,
        "restore": None if store.last_restore is None else dataclasses.asdict(store.last_restore),
        "snapshots": {
            "written": st.snapshots_written,
            "last_seconds": st.snapshot_seconds_last,
            "max_seconds": st.snapshot_seconds_max,
        },
        "tick_stall_max_10s": round(st.tick_stall_max_10s, 3),
        "leader_commit_index": st.leader_commit_index,
        "journal": {
            "syncs": st.journal_syncs,
            "bytes": st.journal_bytes,
            "messages_held": st.messages_held,
            "messages_sent_after_merge": st.messages_sent_after_merge,
            "truncations_below_commit": st.truncations_below_commit,
            "suppressed_truncations": st.suppressed_truncations,
        },
        "app": app[RUNTIME].identity,
        "tables": app[RUNTIME].table_status(),
        "fences": app[RUNTIME].fences(),
        "agents": app[RUNTIME].agents.status(),
        **removal_status(app),
        "reachable": True,
    }


async def status(request: web.Request) -> web.Response:
    return _answer(node_status(request.app), request.app[STORE].revision)


async def cluster(request: web.Request) -> web.Response:
    app = request.app
    me = node_status(app)
    session = app[CLIENT]
    token = app[CONFIG].api_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def fetch(member: dict[str, Any]) -> dict[str, Any]:
        if member["raft_address"] == me["raft_address"]:
            return me
        url = member.get("http_url")
        if not url:
            return {
                "id": member["id"],
                "raft_address": member["raft_address"],
                "reachable": False,
                "error": "no HTTP URL known for this member",
            }
        try:
            async with session.get(
                f"{url}/v1/status", headers=headers, timeout=aiohttp.ClientTimeout(total=1.5)
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                body: dict[str, Any] = await resp.json()
                return body
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable
            return {
                "id": member["id"],
                "raft_address": member["raft_address"],
                "http_url": url,
                "reachable": False,
                "error": str(exc) or type(exc).__name__,
            }

    nodes = await asyncio.gather(*(fetch(m) for m in me["members"]))
    leaders = {n.get("leader") for n in nodes if n.get("reachable") and n.get("role") == "leader"}
    leader = next(iter(leaders)) if len(leaders) == 1 else me["leader"]
    return _answer({"leader": leader, "nodes": list(nodes)}, app[STORE].revision)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "id": request.app[CONFIG].id})


async def readyz(request: web.Request) -> web.Response:
    st = request.app[STORE].status()
    reasons = []
    if st.role == "learner":
        reasons.append("learner: catching up without a vote until POST /v1/cluster/members adds it")
    if st.leader is None:
        reasons.append("no leader known")
    if not st.quorum:
        reasons.append("no quorum")
    if st.applied_index < st.commit_index:
        reasons.append(f"catching up: applied {st.applied_index} of {st.commit_index}")
    cfg = request.app[CONFIG]
    if request.app[STORE].get(MEMBERS_PREFIX + cfg.id) is None:
        reasons.append("not yet registered in the member registry")
    runtime = request.app[RUNTIME]
    for name, table in runtime.engine.status.items():
        if table.state != "in_sync":
            reasons.append(f"blade table {name} is {table.state}")
    for fence in runtime.fences():
        reasons.append(f"{fence['protocol']} fenced: {fence['table']} {fence['cause']}: {fence['message']}")
    if reasons:
        raise ApiError(503, "not_ready", "; ".join(reasons), {"reasons": reasons})
    return web.json_response({"ready": True})


MAX_RESTORE_BYTES = 512 * 1024 * 1024


async def get_snapshot(request: web.Request) -> web.Response:
    """A linearizable backup of the whole key space (msgpack), for POST /v1/restore."""
    data, revision = await request.app[STORE].snapshot()
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={
            "X-Rdb-Revision": str(revision),
            "Content-Disposition": f'attachment; filename="rdbsync-{revision}.snapshot"',
        },
    )


async def post_restore(request: web.Request) -> web.Response:
    """Replace the key space with an uploaded snapshot; every node resyncs in full."""
    # A snapshot may be 512 MiB: ten body timeouts to send it (300 s by default).
    snapshot = await read_body(request, MAX_RESTORE_BYTES, timeout_factor=10)
    if not snapshot:
        raise ApiError(400, "empty_body", "POST the bytes of GET /v1/snapshot", applied=False)
    store = request.app[STORE]
    # Everything this API could not serve afterwards is refused up front, nothing proposed
    # (in a thread: a large snapshot takes seconds to check, parsed once). Values first:
    # the checks after them encode values recursively.
    try:
        plan = await asyncio.to_thread(store.plan_restore, snapshot)
    except InvalidCommand as exc:
        raise ApiError(422, "invalid_snapshot", str(exc), applied=False) from None
    entries = plan.entries
    problem = await asyncio.to_thread(restore_value_problem, entries)
    if problem is None:
        problem = await asyncio.to_thread(request.app[RUNTIME].registry.restore_problem, entries)
    if problem is not None:
        raise ApiError(422, "invalid_snapshot", problem, applied=False)
    # The member registry describes this cluster, not the one the backup came from.
    # Progress: GET /v1/status "restore" on this node, while it runs and after.
    result = await store.restore(plan, keep_prefix=RESERVED_PREFIX)
    revision = int(result["revision"])
    done = store.last_restore
    extra = {} if done is None else {"entries": done.entries_total, "seconds": round(done.seconds, 3)}
    return _answer({"revision": revision, "restored_keys": result.get("restored_keys"), **extra}, revision)


def restore_value_problem(entries: list[KeyValue]) -> str | None:
    """The first value of a snapshot the write path would refuse (too deep, too large in
    its stored form, not encodable), described, or None. Runs in a worker thread."""
    for kv in entries:
        try:
            check_value(kv.value)
        except InvalidCommand as exc:
            return f"the value of {kv.key[:80]!r}: {exc}"
    return None


async def events(request: web.Request) -> web.Response:
    """The bounded, ordered log of resync failures, fences and unfences on this node."""
    after = int_param(request, "after_seq") or 0
    runtime = request.app[RUNTIME]
    items = [e for e in runtime.events if e["seq"] > after]
    return web.json_response({"node": request.app[CONFIG].id, "events": items})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi(request.app))


# ---------------------------------------------------------------- assembly


async def _register_self(app: web.Application) -> None:
    """Put this node's HTTP URL in the replicated member registry, once, with retries."""
    cfg = app[CONFIG]
    store = app[STORE]
    entry = {"id": cfg.id, "raft_address": cfg.raft_address, "http_url": cfg.http_url, "app": app[RUNTIME].identity}
    while True:
        try:
            await store.linearizable_barrier()
            current = store.get(MEMBERS_PREFIX + cfg.id)
            if current is not None and current.value == entry:
                return
            await store.put(MEMBERS_PREFIX + cfg.id, entry)
            return
        except Exception as exc:  # noqa: BLE001 - keep trying until the cluster has quorum
            log.debug("member registration deferred: %s", exc)
            await asyncio.sleep(1.0)


def build_app(config: NodeConfig, store: ReplicatedStore, runtime: BladeRuntime | None = None) -> web.Application:
    """The node's application. The store must already be started on this loop."""
    app = web.Application(
        middlewares=[_front_middleware],
        client_max_size=MAX_BODY_BYTES,
        # Bodies are decoded by read_body; a connection is closed when no complete request
        # head arrives for header_timeout (aiohttp's keep-alive timer covers both the wait
        # for a request and a head that trickles in; so it is also the idle keep-alive time,
        # and its default, 30 s, outlasts aiohttp's client pool, 15 s: no reuse race).
        # A body left unread (a refusal, a timeout) is drained for at most lingering_time.
        handler_args={
            "auto_decompress": False,
            "keepalive_timeout": config.header_timeout,
            "lingering_time": min(2.0, config.body_timeout),
        },
    )
    app[STORE] = store
    app[CONFIG] = config
    init_removal(app)
    app[RUNTIME] = runtime or BladeRuntime(
        config.id,
        store,
        audit_interval=config.audit_interval,
        policy=config.fence_policy,
        app=config.app,
        agents={**config.agents, **{s.name: s.tables for s in config.sinks}},
        agent_timeout=config.agent_timeout,
    )
    sinks = [FileSink(spec, app[RUNTIME]) for spec in config.sinks]

    async def lifecycle(app: web.Application) -> Any:
        app[CLIENT] = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_register_self(app)), loop.create_task(app[RUNTIME].run())]
        tasks += [loop.create_task(sink.run()) for sink in sinks]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app[CLIENT].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/kv/{key:.+}", get_key)
    app.router.add_put("/v1/kv/{key:.+}", put_key)
    app.router.add_delete("/v1/kv/{key:.+}", delete_key)
    app.router.add_get("/v1/kv", list_keys)
    app.router.add_post("/v1/txn", txn)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/cluster", cluster)
    app.router.add_post("/v1/cluster/members", add_member)
    app.router.add_delete("/v1/cluster/members/{id}", remove_member)
    app.router.add_post("/v1/cluster/removed", removed_notice)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/snapshot", get_snapshot)
    app.router.add_post("/v1/restore", post_restore)
    add_routes(app)
    add_agent_routes(app)
    install_observability(app)  # /metrics, /ui, structured start-up log
    if config.fault_injection:
        add_debug_routes(app)
    return app


__all__ = ["build_app", "make_runner", "node_status", "restore_value_problem"]
