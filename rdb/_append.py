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
