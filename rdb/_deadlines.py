"""Deadlines of many waiting futures on one loop timer.

Every request on the hot path waits with a deadline: a write for its Raft answer, a read
for its barrier. A loop timer each (``loop.call_later``, then ``cancel``) is not cheap
there: the loop keeps its timers in a heap ordered by a comparison written in Python
(``TimerHandle.__lt__``), and a cancelled timer stays in it until the loop rebuilds the
heap. Here a deadline is one list append, and one loop timer serves them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: The longest a finished wait stays referenced here before a sweep drops it: the timer
#: fires at least this often while anything is held, so a busy node holds about
#: (requests per second) x this, not x the request timeout.
SWEEP_SECONDS = 0.25

Expire = Callable[["asyncio.Future[Any]"], None]


class Deadlines:
    """Calls ``expire(fut)`` at ``deadline`` (loop time) for each future added, unless
    the future is done by then. Loop thread only: ``add`` is not thread safe, and
    ``expire`` runs from the loop's timer.

    Guarantees: a future not done at its deadline is expired by the first sweep at or
    after it (the one timer is armed for the earliest deadline held, or sooner, to drop
    finished waits: at most ``sweep_seconds`` apart); a done future is never expired; each
    future is expired once at most. An exception from ``expire`` goes to the loop's
    exception handler; the other futures due in that sweep are still expired.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sweep_seconds: float = SWEEP_SECONDS) -> None:
        self.loop = loop
        self._sweep_seconds = sweep_seconds
        self._waits: list[tuple[float, asyncio.Future[Any], Expire]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        """The futures held: waiting, or done and not yet dropped by a sweep."""
        return len(self._waits)

    def add(self, fut: asyncio.Future[Any], deadline: float, expire: Expire) -> None:
        """Expire ``fut`` with ``expire(fut)`` at ``deadline`` unless it is done by then.
        O(1): no timer of its own unless it is due before the one armed."""
        self._waits.append((deadline, fut, expire))
        if self._timer is None or deadline < self._timer_at:
            self._arm(min(deadline, self.loop.time() + self._sweep_seconds))

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        due: list[tuple[asyncio.Future[Any], Expire]] = []
        kept: list[tuple[float, asyncio.Future[Any], Expire]] = []
        for entry in self._waits:
            deadline, fut, expire = entry
            if fut.done():
                continue
            if deadline <= now:
                due.append((fut, expire))
            else:
                kept.append(entry)
        self._waits = kept
        if kept:
            self._arm(min(min(entry[0] for entry in kept), now + self._sweep_seconds))
        for fut, expire in due:
            if fut.done():  # an earlier expire may have finished it
                continue
            try:
                expire(fut)
            except Exception as exc:  # noqa: BLE001 - reported; the rest must still expire
                self.loop.call_exception_handler(
                    {"message": "a deadline's expire callback raised", "exception": exc, "future": fut}
                )


__all__ = ["SWEEP_SECONDS", "Deadlines"]
