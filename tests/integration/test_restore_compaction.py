"""A committed restore leaves the whole key space in every node's journal a second time:
each node compacts it away soon after (its rank times ``RESTORE_COMPACT_STAGGER``), not at
the next periodic compaction minutes later."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rdb import StateMachine
from rdb._commands import put
from tests.integration.cluster import in_process_stores, settled_stores

pytestmark = pytest.mark.integration

KEYS = 2_000


def _snapshot(keys: int) -> bytes:
    sm = StateMachine()
    for i in range(keys):
        sm.apply(put(f"restored/k{i:05d}", "x" * 200, request_id=f"r{i}"), i + 1)
    return sm.snapshot()


async def test_every_node_compacts_a_committed_restore_away(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, _ = await settled_stores(stores)
        written = [s.status().snapshots_written for s in stores]
        result = await leader.restore(_snapshot(KEYS), timeout=30)
        assert result["status"] == "ok", result
        restored_bytes = max(s.status().journal_bytes for s in stores)
        assert restored_bytes > KEYS * 200  # the restore's entries hold every row
        deadline = time.monotonic() + 30  # the periodic compaction would come after 300 s
        # The journal drops the compacted entries a tick or so after the snapshot is written.
        while not all(s.status().journal_bytes < KEYS * 200 for s in stores):
            assert time.monotonic() < deadline, [
                (s.status().snapshots_written, s.status().journal_bytes) for s in stores
            ]
            await asyncio.sleep(0.05)
        assert all(s.status().snapshots_written > w for s, w in zip(stores, written, strict=True))
        assert all(s.get("restored/k01999") is not None for s in stores)
    finally:
        for s in stores:
            s.close()
