"""When a commit reaches the followers and their state machines, on in-process replicas.

Two orderings keep the commit-to-blade latency short (``scripts/bench-latency``):

- the leader sends the new commit index before it applies the entries, so the
  followers' applies overlap its own;
- a follower applies what the leader said is committed before it fsyncs the entries
  that came in the same AppendEntries (committed entries are on a majority's disks).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.cluster import in_process_stores, settled_stores

pytestmark = pytest.mark.integration

WRITES = 200
CONCURRENT = 16


async def _write_concurrently(store: Any, prefix: str) -> None:
    async def writer(w: int) -> None:
        for i in range(w, WRITES, CONCURRENT):
            assert (await store.put(f"{prefix}{i}", i))["status"] == "ok"

    await asyncio.gather(*(writer(w) for w in range(CONCURRENT)))


async def test_the_leader_announces_a_new_commit_index_before_it_applies(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, _ = await settled_stores(stores)
        raft = leader.raft
        transport = raft._SyncObj__transport
        real_send = transport.send
        announced: list[tuple[int, int]] = []  # (commit index, applied index when first sent)
        known = int(raft.raftCommitIndex)  # the cluster is idle: no commit in flight

        def spy(node: Any, message: Any) -> bool:
            commit = message.get("commit_index") if message.get("type") == "append_entries" else None
            if commit is not None and commit > (announced[-1][0] if announced else known):
                announced.append((commit, int(raft.raftLastApplied)))
            return bool(real_send(node, message))

        transport.send = spy  # instance attribute: the tick thread calls it from now on
        await _write_concurrently(leader, "a")
        assert len(announced) > 10
        # Every new commit index left before the entries it commits were applied.
        assert all(applied < commit for commit, applied in announced), announced[:10]
    finally:
        for s in stores:
            s.close()


async def test_a_follower_applies_committed_entries_before_its_own_fsync(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        waiting: list[int] = []  # committed entries not yet applied, at each follower fsync
        for follower in followers:
            raft = follower.raft
            journal = raft._rdb_journal
            real_sync = journal.sync

            def spy(raft: Any = raft, real_sync: Any = real_sync) -> bool:
                waiting.append(int(raft.raftCommitIndex) - int(raft.raftLastApplied))
                return bool(real_sync())

            journal.sync = spy
        await _write_concurrently(leader, "f")
        assert len(waiting) > 10
        assert not any(waiting), f"{sum(1 for w in waiting if w)} of {len(waiting)} fsyncs held up a commit"
    finally:
        for s in stores:
            s.close()
