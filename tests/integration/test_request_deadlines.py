"""The deadlines of writes and reads on in-process replicas: one loop timer serves them
all (``rdb._deadlines``), and a wait still ends at its deadline when no quorum answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rdb import NoQuorum
from tests.integration.cluster import in_process_stores, settled_stores

pytestmark = pytest.mark.integration

REQUESTS = 200


async def test_concurrent_writes_and_reads_arm_no_timer_each(tmp_path: Any, monkeypatch: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        _, followers = await settled_stores(stores)
        follower = followers[0]
        await follower.linearizable_barrier(timeout=10)
        loop = asyncio.get_running_loop()
        timers = 0
        real_call_at = loop.call_at

        def counting_call_at(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            nonlocal timers
            timers += 1
            return real_call_at(*args, **kwargs)

        monkeypatch.setattr(loop, "call_at", counting_call_at)  # call_later goes through it
        writes = [follower.put(f"k{i}", i, timeout=10) for i in range(REQUESTS)]
        reads = [follower.linearizable_barrier(timeout=10) for _ in range(REQUESTS)]
        results, _ = await asyncio.gather(asyncio.gather(*writes), asyncio.gather(*reads))
        assert all(r["status"] == "ok" for r in results)
        # A timer per request armed 400 and more (and left 400 cancelled ones in the
        # loop's heap); now a sweep every quarter second, and a few for the rounds.
        assert timers < REQUESTS // 10, timers
    finally:
        for s in stores:
            s.close()


async def test_a_write_no_quorum_answers_ends_at_its_deadline(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        await leader.linearizable_barrier(timeout=10)
        for f in followers:
            f.close()
        started = time.monotonic()
        with pytest.raises(NoQuorum) as caught:
            await leader.put("lost", 1, timeout=0.5)
        elapsed = time.monotonic() - started
        assert caught.value.applied == "unknown"  # it may yet commit, if a majority comes back
        assert 0.5 <= elapsed < 5.0, elapsed  # not the 5 s default, nor forever
    finally:
        for s in stores:
            s.close()
