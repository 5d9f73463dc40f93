"""Pure follower-side decision for an incoming AppendEntries: what to keep, what to cut.

PySyncObj 0.3.17 truncates a follower's log whenever ``prevLogIdx`` is below its last
index, even when the entries match. Raft allows truncation only on a real conflict
(same index, different term). ``plan_append`` rewrites a message so PySyncObj's handler
does exactly what Raft says:

- entries we already hold with the same term are dropped from the message;
- if a message entry conflicts, the message is cut to start at the conflict (PySyncObj
  then truncates from there, which is correct);
- if every entry matches and our log is longer, nothing is truncated. When the longer
  tail is known to match this leader (we appended it from this leader in this term),
  ``prev`` moves to our last entry; otherwise truncation is suppressed and we answer
  "matched up to X" only.

It also caps the commit index the follower may adopt at what this message (and earlier
messages of the same term) verified, per Raft's ``min(leaderCommit, last new entry)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Entry = Sequence[Any]  # (command, index, term)


@dataclass(frozen=True, slots=True)
class AppendPlan:
    prev_index: int
    prev_term: int
    entries: list[Any]
    suppress_truncation: bool
    verified_index: int  # our log matches the leader's up to here after this message
    decision: str  # short, for logs and tests


def plan_append(
    term_at: Callable[[int], int | None],
    last_index: int,
    prev_index: int,
    prev_term: int,
    entries: Sequence[Entry],
    verified_in_term: int,
) -> AppendPlan | None:
    """Return the rewrite for one AppendEntries, or None to leave it to PySyncObj
    (a ``prev`` mismatch, which PySyncObj rejects correctly).

    ``term_at(i)`` is the term of our entry ``i`` or None if we do not hold it;
    ``verified_in_term`` is how far our log is known to match the current leader.
    """
    if term_at(prev_index) != prev_term:
        return None
    k = 0
    while k < len(entries) and term_at(entries[k][1]) == entries[k][2]:
        k += 1
    if k > 0:
        prev_index, prev_term = entries[k - 1][1], entries[k - 1][2]
    rest = list(entries[k:])
    if rest:
        decision = "append" if term_at(rest[0][1]) is None else "truncate_conflict"
        return AppendPlan(prev_index, prev_term, rest, False, rest[-1][1], decision)
    # Every entry matched (or a heartbeat): never truncate.
    if prev_index == last_index:
        return AppendPlan(prev_index, prev_term, [], False, prev_index, "match")
    if verified_in_term >= last_index:
        last_term = term_at(last_index)
        assert last_term is not None
        return AppendPlan(last_index, last_term, [], False, last_index, "match_known_tail")
    return AppendPlan(prev_index, prev_term, [], True, prev_index, "match_keep_unverified_tail")


def _last_index_term(message: dict[str, Any]) -> tuple[Any, Any]:
    entries = message.get("entries") or []
    if entries:
        return entries[-1][1], entries[-1][2]
    return message.get("prevLogIdx"), message.get("prevLogTerm")


def _plain_append(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("type") == "append_entries"
        and "prevLogIdx" in message
        and "transmission" not in message
        and "serialized" not in message
    )


def _plain_ack(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("type") == "next_node_idx"
        and message.get("success") is True
        and not message.get("reset")
    )


def coalesce_outgoing(held: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Merge messages held back during one group commit, per destination, in order.

    - consecutive AppendEntries to one node that continue each other (same term, the
      second's ``prev`` is the first's last entry) become one message;
    - consecutive successful acks to one node collapse to the latest (acks are
      cumulative: ``next_node_idx`` only grows).
    Messages of other kinds, and the order of everything per node, are kept. Pure.
    """
    per_node: dict[Any, list[Any]] = {}
    for node, message in held:
        queue = per_node.setdefault(node, [])
        last: Any = queue[-1] if queue else None
        if _plain_append(message) and _plain_append(last) and last["term"] == message["term"]:
            if _last_index_term(last) == (message["prevLogIdx"], message["prevLogTerm"]):
                merged = dict(last)
                merged["entries"] = list(last.get("entries") or []) + list(message.get("entries") or [])
                merged["commit_index"] = max(last["commit_index"], message["commit_index"])
                if "probe" in message:  # the later round answers for both (ReadIndex)
                    merged["probe"] = max(last.get("probe", 0), message["probe"])
                queue[-1] = merged
                continue
        if _plain_ack(message) and _plain_ack(last) and message["next_node_idx"] >= last["next_node_idx"]:
            queue[-1] = message
            continue
        queue.append(message)
    return [(node, message) for node, queue in per_node.items() for message in queue]
