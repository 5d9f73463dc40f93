"""``rdb._deadlines.Deadlines``: many waits' deadlines on one loop timer, on a clock the
test moves by hand (no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdb._deadlines import Deadlines

SWEEP = 0.25


class _Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Clock:
    """The part of a loop ``Deadlines`` uses: ``time``, ``call_at``, the exception handler."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[_Timer] = []
        self.errors: list[dict[str, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(when, callback)
        self.timers.append(timer)
        return timer

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def armed(self) -> list[_Timer]:
        return [t for t in self.timers if not t.cancelled and t.callback is not None]

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers in order (as the loop would)."""
        target = self.now + seconds
        while True:
            due = sorted((t for t in self.armed() if t.when <= target), key=lambda t: t.when)
            if not due:
                break
            timer = due[0]
            self.now = max(self.now, timer.when)
            callback, timer.callback = timer.callback, None  # type: ignore[assignment]
            callback()
        self.now = target


@pytest.fixture()
def futures() -> Iterator[Callable[[], asyncio.Future[Any]]]:
    loop = asyncio.new_event_loop()  # futures only: nothing runs on it
    yield loop.create_future
    loop.close()


def _deadlines(clock: _Clock) -> Deadlines:
    return Deadlines(clock, sweep_seconds=SWEEP)  # type: ignore[arg-type]


def _expire(fut: asyncio.Future[Any]) -> None:
    fut.set_result("expired")


def test_a_wait_expires_at_its_deadline_and_not_before(futures: Callable[[], asyncio.Future[Any]]) -> None:
    clock = _Clock()
    deadlines = _deadlines(clock)
    fut = futures()
    deadlines.add(fut, clock.now + 1.0, _expire)
    clock.advance(0.999)
    assert not fut.done()
    clock.advance(0.001)
    assert fut.result() == "expired"


def test_a_done_wait_is_never_expired_and_is_dropped_within_a_sweep(
    futures: Callable[[], asyncio.Future[Any]],
) -> None:
    clock = _Clock()
    deadlines = _deadlines(clock)
    waits = [futures() for _ in range(100)]
    for fut in waits:
        deadlines.add(fut, clock.now + 5.0, _expire)
    for fut in waits:
        fut.set_result("answered")
    assert len(deadlines) == 100
    clock.advance(SWEEP)
    assert len(deadlines) == 0  # not kept for the 5 s of their timeout
    assert clock.armed() == []  # nothing held: no timer either
    clock.advance(10.0)
    assert all(fut.result() == "answered" for fut in waits)


def test_many_waits_share_one_timer(futures: Callable[[], asyncio.Future[Any]]) -> None:
    clock = _Clock()
    deadlines = _deadlines(clock)
    for i in range(1000):
        deadlines.add(futures(), clock.now + 5.0 + i * 1e-4, _expire)
    assert len(clock.timers) == 1  # one call_at for a thousand waits


def test_an_earlier_deadline_added_later_is_kept(futures: Callable[[], asyncio.Future[Any]]) -> None:
    clock = _Clock()
    deadlines = _deadlines(clock)
    late, early = futures(), futures()
    deadlines.add(late, clock.now + 5.0, _expire)
    deadlines.add(early, clock.now + 0.1, _expire)
    clock.advance(0.1)
    assert early.result() == "expired"
    assert not late.done()
    clock.advance(4.9)
    assert late.result() == "expired"


def test_a_long_wait_does_not_hold_the_finished_ones(futures: Callable[[], asyncio.Future[Any]]) -> None:
    clock = _Clock()
    deadlines = _deadlines(clock)
    stuck = futures()
    deadlines.add(stuck, clock.now + 5.0, _expire)
    for _ in range(10):
        answered = [futures() for _ in range(50)]
        for fut in answered:
            deadlines.add(fut, clock.now + 5.0, _expire)
            fut.set_result("answered")
        clock.advance(SWEEP)
        assert len(deadlines) == 1  # only the wait still running
    clock.advance(5.0)
    assert stuck.result() == "expired"
    assert len(deadlines) == 0


def test_a_cancelled_wait_is_dropped_not_expired(futures: Callable[[], asyncio.Future[Any]]) -> None:
    clock = _Clock()
    deadlines = _deadlines(clock)
    fut = futures()
    deadlines.add(fut, clock.now + 0.1, _expire)
    fut.cancel()
    clock.advance(1.0)
    assert fut.cancelled()
    assert len(deadlines) == 0


def test_an_expire_that_raises_is_reported_and_the_others_still_expire(
    futures: Callable[[], asyncio.Future[Any]],
) -> None:
    clock = _Clock()
    deadlines = _deadlines(clock)

    def broken(fut: asyncio.Future[Any]) -> None:
        raise RuntimeError("boom")

    first, second = futures(), futures()
    deadlines.add(first, clock.now + 0.1, broken)
    deadlines.add(second, clock.now + 0.1, _expire)
    clock.advance(0.1)
    assert second.result() == "expired"
    assert [str(e["exception"]) for e in clock.errors] == ["boom"]


async def test_on_a_real_loop_a_wait_past_its_deadline_ends() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    fut: asyncio.Future[Any] = loop.create_future()
    started = loop.time()
    deadlines.add(fut, started + 0.05, _expire)
    assert await asyncio.wait_for(fut, 5.0) == "expired"
    assert loop.time() >= started + 0.05
