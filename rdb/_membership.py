"""Membership rules: what can be a member, when a change may be proposed, when a
learner may vote. Pure functions, except ``resolve`` (DNS), which takes the resolver
as an argument so the rules can be tested without one.

The rules (shared/PYSYNCOBJ.md, issue 8 point 5):

- one change at a time, decided by the leader: no change is proposed while a membership
  entry sits between the leader's commit index and its last log index
  (``pending_change_index``), nor before the leader has committed an entry of its own
  term (Raft's single-server-change rule; PySyncObj's own check is dead code);
- an address is ``host:port`` in ASCII, the port 1-65535, the host a DNS name or an IPv4
  address that resolves; two addresses that resolve to the same (ip, port) are the same
  member (``localhost:7001`` is ``127.0.0.1:7001``);
- a new member catches up as a non-voting learner first and is proposed as a voter only
  once its applied index is within ``CATCH_UP_MAX_LAG`` entries of the leader's commit
  index (``caught_up``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from typing import Any

from rdb._errors import InvalidMember

#: A learner this close to the leader's commit index becomes a voter: catching up the
#: rest takes milliseconds, so the cluster's fault tolerance is not reduced for long.
CATCH_UP_MAX_LAG = 1000
MAX_HOST_CHARS = 253  # the longest DNS name

# ASCII only: Python's \d and str.isdigit() accept other scripts' digits ("\u0663").
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)

Resolver = Callable[[str, int], Iterable[tuple[str, int]]]


def parse_address(address: Any) -> tuple[str, int]:
    """``(host, port)`` of a member address. Raises ``InvalidMember`` saying why not."""
    if not isinstance(address, str):
        raise InvalidMember("a member address is a string 'host:port'", address=str(address)[:100])
    shown = address[:100]
    if not address.isascii():
        raise InvalidMember("a member address must be ASCII (host:port)", address=shown)
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise InvalidMember("a member address is 'host:port'", address=shown)
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise InvalidMember("the port must be a number from 1 to 65535", address=shown)
    if len(host) > MAX_HOST_CHARS:
        raise InvalidMember(f"the host is longer than {MAX_HOST_CHARS} characters", address=shown)
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidMember("the host must be a DNS name or an IPv4 address", address=shown)
    return host.lower(), int(port_text)


def normalize_address(address: Any) -> str:
    """The canonical spelling of a valid address (lower-case host). Raises ``InvalidMember``."""
    host, port = parse_address(address)
    return f"{host}:{port}"


def system_resolver(host: str, port: int) -> list[tuple[str, int]]:
    """IPv4 endpoints of ``host:port`` (PySyncObj's transport is IPv4). Raises ``OSError``."""
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    return [(str(info[4][0]), int(info[4][1])) for info in infos]


def resolve(address: str, resolver: Resolver = system_resolver) -> frozenset[tuple[str, int]]:
    """Every (ip, port) ``address`` names. Raises ``InvalidMember`` if it does not resolve."""
    host, port = parse_address(address)
    try:
        endpoints = frozenset(resolver(host, port))
    except (OSError, UnicodeError) as exc:
        raise InvalidMember(f"the host {host[:100]!r} does not resolve: {exc}", address=address[:100]) from None
    if not endpoints:
        raise InvalidMember(f"the host {host[:100]!r} does not resolve", address=address[:100])
    return endpoints


def check_new_member(address: Any, members: Iterable[str], resolver: Resolver = system_resolver) -> str:
    """The normalized address of a node that may be added next to ``members``.

    Raises ``InvalidMember`` for bad syntax, a host that does not resolve, an existing
    member (``reason`` "already_member") or an alias of one (``reason`` "alias": it
    resolves to an endpoint of an existing member). A member whose own name no longer
    resolves is compared by spelling only."""
    normalized = normalize_address(address)
    endpoints = resolve(normalized, resolver)
    for member in members:
        try:
            same = normalize_address(member) == normalized
        except InvalidMember:
            same = member == address
        if same:
            raise InvalidMember(f"{normalized} is already a member", address=normalized, reason="already_member")
        try:
            theirs = resolve(member, resolver)
        except InvalidMember:
            continue
        if theirs & endpoints:
            raise InvalidMember(
                f"{normalized} is another name for the member {member}",
                address=normalized,
                reason="alias",
                member=member,
            )
    return normalized


def pending_change_index(
    entries: Iterable[tuple[int, bool]],
    commit_index: int,
) -> int | None:
    """The index of the first membership entry above ``commit_index`` among ``entries``
    (``(index, is_membership)`` pairs, the log's tail), or None: while one exists, the
    leader must not propose another change."""
    for index, is_membership in entries:
        if index > commit_index and is_membership:
            return index
    return None


def caught_up(learner_applied: int, leader_commit: int, max_lag: int = CATCH_UP_MAX_LAG) -> bool:
    """Whether a learner that applied ``learner_applied`` is close enough to the leader's
    ``leader_commit`` to become a voter."""
    return leader_commit - learner_applied <= max_lag


def may_promote(
    in_membership: bool,
    newest_change: tuple[int, str] | None,
    last_index: int,
    commit_index: int,
    leader_commit_index: int | None,
) -> bool:
    """Whether a learner may restart as a voter.

    ``in_membership``: its address is in its current member set (snapshot plus log).
    ``newest_change``: ``(index, "add" | "rem")`` of the newest membership entry for its
    address in its log, or None. ``last_index``: its log's last index; ``commit_index``:
    its own; ``leader_commit_index``: what the leader's last message said (None before).

    A learner must first hold every entry the leader had committed: a node wiped and
    rejoining gets the leader's snapshot first, which may predate the removal of its old
    incarnation and so still list its address; promoting on that stale view makes a
    "voter" the cluster does not count, and the add it waits for never comes. Then the
    newest change for the address decides: a committed add. With none in the log, the
    add is in the snapshot, hence committed."""
    if not in_membership or leader_commit_index is None or last_index < leader_commit_index:
        return False
    if newest_change is None:
        return True
    index, action = newest_change
    return action == "add" and index <= commit_index
