"""Raft results reach the loop in batches: one loop wake-up for a burst of results."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from rdb._store import _Handoff


async def test_a_burst_of_results_costs_one_wakeup_and_resolves_every_future() -> None:
    loop = asyncio.get_running_loop()
    handoff = _Handoff()
    futures: list[asyncio.Future[tuple[Any, int]]] = [loop.create_future() for _ in range(100)]

    def tick_thread() -> None:  # the loop is blocked in join() below: it cannot drain
        for i, fut in enumerate(futures):
            handoff.post(loop, fut, (i, 0))

    t = threading.Thread(target=tick_thread)
    t.start()
    t.join(timeout=10)
    assert handoff.wakeups == 1
    results = await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert results == [(i, 0) for i in range(100)]
    # After a drain the next result schedules a fresh wake-up: none is lost.
    late: asyncio.Future[tuple[Any, int]] = loop.create_future()
    threading.Thread(target=handoff.post, args=(loop, late, ("late", 0))).start()
    assert await asyncio.wait_for(late, 10) == ("late", 0)
    assert handoff.wakeups == 2
