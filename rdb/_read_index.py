"""ReadIndex bookkeeping (Raft thesis, section 6.4): pure, no I/O, no clock.

A linearizable read needs no log entry. The leader notes its *read index* (its commit
index, and at least its own term's no-op, so every entry committed before the read
began is covered), then proves it was still the leader after the read arrived: a
majority of voters acknowledges an AppendEntries round it sent after that moment. The
node serving the read then waits until it has applied the read index.

Rounds are numbered (``probe``): every AppendEntries carries the number of the round it
belongs to, and a follower's acknowledgement echoes the number of the AppendEntries it
answers. A read that arrived while round ``k`` was the latest one sent is confirmed by
round ``k + 1``. Acknowledgements count only in the term they were sent in, so a
leader's count starts afresh in every term.

``LeaderReads`` runs on the Raft tick thread only.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class PendingRead(Generic[R]):
    """A read waiting for its leadership round: answer ``reply`` with ``index``."""

    term: int
    probe: int
    index: int
    reply: R


class LeaderReads(Generic[R]):
    """The leader's side: reads waiting for a round that confirms its leadership."""

    def __init__(self) -> None:
        #: The number of the latest AppendEntries round sent (never reset: a stale
        #: acknowledgement of an older term is refused by its term, not its number).
        self.sent_probe = 0
        self._term = -1
        self._acked: dict[Hashable, int] = {}
        self._pending: deque[PendingRead[R]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def term(self) -> int:
        """The term the waiting reads (and the counted acknowledgements) belong to."""
        return self._term

    def round_sent(self) -> int:
        """A new AppendEntries round goes out now; returns its number (to stamp on it)."""
        self.sent_probe += 1
        return self.sent_probe

    def request(self, term: int, index: int, reply: R) -> None:
        """A read arrived at the leader of ``term`` whose read index is ``index``; the
        next round sent must confirm it. Reads of an older term must have been dropped
        (``drop``) first: they can no longer be confirmed."""
        self._new_term(term)
        self._pending.append(PendingRead(term, self.sent_probe + 1, index, reply))

    def acknowledged(self, term: int, node: Hashable, probe: int) -> None:
        """``node`` answered, in ``term``, the AppendEntries of round ``probe``."""
        self._new_term(term)
        if probe > self._acked.get(node, 0):
            self._acked[node] = probe

    def confirmed(self, term: int, voters: Iterable[Hashable]) -> list[PendingRead[R]]:
        """The reads of ``term`` whose round a majority of the voters (``voters``: the
        others; this leader counts itself) has acknowledged, in arrival order; they are
        removed."""
        self._new_term(term)
        acks = sorted((self._acked.get(node, 0) for node in voters), reverse=True)
        needed = (len(acks) + 1) // 2  # followers needed, with the leader, for a majority
        # Alone, the leader is its own majority: every waiting read is confirmed.
        majority_probe = self.sent_probe + 1 if needed == 0 else acks[needed - 1]
        done: list[PendingRead[R]] = []
        while self._pending and self._pending[0].term == term and self._pending[0].probe <= majority_probe:
            done.append(self._pending.popleft())
        return done

    def drop(self) -> list[PendingRead[R]]:
        """Every waiting read (leadership lost, or the node stops); they are removed."""
        dropped = list(self._pending)
        self._pending.clear()
        return dropped

    def _new_term(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._acked.clear()


class AppliedWaiters(Generic[R]):
    """Reads whose index is known, waiting for this node to apply it (tick thread)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, int, R]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, index: int, reply: R) -> None:
        self._seq += 1
        heapq.heappush(self._waiting, (index, self._seq, reply))

    def ready(self, applied: int) -> list[tuple[int, R]]:
        """The reads whose index is at most ``applied``; they are removed."""
        done: list[tuple[int, R]] = []
        while self._waiting and self._waiting[0][0] <= applied:
            index, _, reply = heapq.heappop(self._waiting)
            done.append((index, reply))
        return done
