"""Durability of the Raft layer, with three in-process replicas on loopback.

An acknowledgement (SUCCESS at the proposer) must come only after the entry is fsynced
on a majority; fsyncs are batched across concurrent writes (group commit).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from rdb import ReplicatedStore, _commands
from rdb._journal import DurableJournal
from tests.integration.cluster import free_ports

pytestmark = pytest.mark.integration


async def _three_stores(tmp_path: Any) -> list[ReplicatedStore]:
    return await _three_stores_at(tmp_path, [f"127.0.0.1:{p}" for p in free_ports(3)])


async def test_ack_only_after_fsync_on_a_majority(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    synced_upto: dict[int, int] = {}  # id(journal) -> highest fsynced index
    real_sync = DurableJournal.sync

    def recording_sync(self: DurableJournal) -> bool:
        last = self.last_index
        if self.dirty:
            time.sleep(0.005)  # a slow disk widens any window between ack and fsync
        did = real_sync(self)
        if did:
            synced_upto[id(self)] = last
        return did

    monkeypatch.setattr(DurableJournal, "sync", recording_sync)
    stores = await _three_stores(tmp_path)
    violations: list[tuple[int, list[int]]] = []
    try:
        journals = [s.raft._rdb_journal for s in stores]

        async def write(i: int) -> None:
            result = await stores[i % 3].put(f"k{i}", i)
            assert result["status"] == "ok"
            index = stores[i % 3].raft.raftLastApplied
            durable = [synced_upto.get(id(j), 0) for j in journals]
            if sum(d >= index for d in durable) < 2:
                violations.append((index, durable))

        await asyncio.gather(*(write(i) for i in range(300)))
        assert not violations, violations[:5]
        syncs = sum(j.sync_count for j in journals)
        # Group commit: far fewer fsyncs than entries x replicas.
        assert syncs < 300 * 3, syncs
    finally:
        for s in stores:
            s.close()


async def test_restart_from_journal_and_snapshot(tmp_path: Any) -> None:
    stores = await _three_stores(tmp_path)
    try:
        for i in range(50):
            assert (await stores[i % 3].put(f"r{i}", i))["status"] == "ok"
        stores[0].raft.forceLogCompaction()
        for _ in range(200):  # bounded poll for the tick thread to write the snapshot
            if os.path.exists(os.path.join(str(tmp_path), "s0", "raft.snapshot")):
                break
            await asyncio.sleep(0.02)
        assert os.path.exists(os.path.join(str(tmp_path), "s0", "raft.snapshot"))
        for i in range(50, 60):
            assert (await stores[i % 3].put(f"r{i}", i))["status"] == "ok"
    finally:
        for s in stores:
            s.close()
    stores = await _three_stores_at(tmp_path, [s._raft_address for s in stores])
    try:
        await stores[1].linearizable_barrier(timeout=15)
        for s in stores:
            await s.linearizable_barrier(timeout=15)
            assert [s.get(f"r{i}").value for i in range(60)] == list(range(60))  # type: ignore[union-attr]
        assert stores[0].load_count >= 1  # loaded from the snapshot: a load event
    finally:
        for s in stores:
            s.close()


async def _three_stores_at(tmp_path: Any, addrs: list[str]) -> list[ReplicatedStore]:
    loop = asyncio.get_running_loop()
    stores = [
        ReplicatedStore(a, [b for b in addrs if b != a], os.path.join(str(tmp_path), f"s{i}"), password="pw")
        for i, a in enumerate(addrs)
    ]
    for s in stores:
        s.start(loop)
    return stores


async def test_writes_forwarded_by_a_follower_travel_in_batches(tmp_path: Any) -> None:
    """Concurrent writes through a follower reach the leader as a few batch messages (and
    their answers come back batched), each applied exactly once on every replica."""
    stores = await _three_stores(tmp_path)
    try:
        assert (await stores[0].put("warm", 0, timeout=15))["status"] == "ok"
        follower = next(s for s in stores if not s.raft._isLeader())
        leader = next(s for s in stores if s.raft._isLeader())
        # Proposed one entry each (not shared entries, see the next test): the forwards batch.
        puts = [_commands.put(f"f{i}", i, request_id=_commands.new_request_id()) for i in range(200)]
        results = await asyncio.gather(*(follower.propose(p, timeout=15) for p in puts))
        assert all(r["status"] == "ok" for r in results), [r for r in results if r["status"] != "ok"][:3]
        assert sorted(r["revision"] for r in results) == list(range(2, 202))  # once each
        for s in stores:
            await s.linearizable_barrier(timeout=15)
            assert [s.get(f"f{i}").value for i in range(200)] == list(range(200))  # type: ignore[union-attr]
        # Without batching every forwarded write is its own message each way.
        assert follower.raft._SyncObj__transport.forward_batches > 0
        assert leader.raft._SyncObj__transport.forward_batches > 0
    finally:
        for s in stores:
            s.close()


async def test_writes_of_one_loop_pass_share_a_log_entry(tmp_path: Any) -> None:
    """Writes proposed together go into a few log entries (``_commands.batch``), and each
    still gets its own revision and result, applied once on every replica."""
    stores = await _three_stores(tmp_path)
    try:
        assert (await stores[0].put("warm", 0, timeout=15))["status"] == "ok"
        follower = next(s for s in stores if not s.raft._isLeader())
        await follower.linearizable_barrier(timeout=15)
        before = follower.raft._rdb_journal.last_index
        results = await asyncio.gather(
            *(follower.put(f"b{i}", i, timeout=15) for i in range(100)),
            follower.put("b0", "again", prev_revision=1, timeout=15),  # a CAS that fails inside a batch
        )
        assert [r["status"] for r in results[:100]] == ["ok"] * 100
        assert results[100]["status"] == "conflict"
        assert sorted(r["revision"] for r in results[:100]) == list(range(2, 102))
        # One entry per write before: 100 at least.
        assert follower.raft._rdb_journal.last_index - before < 20
        assert follower.entries_batched >= 1
        # Every write's revision is timed as it applies (commit -> blade latency figures).
        assert {rev for rev, _ in follower.commit_times} >= set(range(2, 102))
        for s in stores:
            await s.linearizable_barrier(timeout=15)
            assert [s.get(f"b{i}").value for i in range(100)] == list(range(100))  # type: ignore[union-attr]
            assert s.revision == 101
    finally:
        for s in stores:
            s.close()
