"""A learner's promotion: the Raft node restarts as a voter on the same data.

The restarted node replays its journal from its snapshot; until it has re-applied what
the learner had applied, the state the node serves must stay the learner's, never an
older one (a read whose barrier completed before the restart reads after it).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from rdb import ReplicatedStore
from tests.integration.cluster import free_ports, in_process_stores, on_tick, settled_stores

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("late", [False, True], ids=["journal_only", "from_a_snapshot"])
async def test_promotion_never_serves_an_older_state_than_the_learner_had(tmp_path: Any, late: bool) -> None:
    """``late``: the learner starts after the voters compacted, so it gets the leader's
    snapshot and its restart loads a snapshot before replaying the journal."""
    loop = asyncio.get_running_loop()
    ports = free_ports(4)
    voters = [f"127.0.0.1:{p}" for p in ports[:3]]
    learner_address = f"127.0.0.1:{ports[3]}"
    stores = [
        ReplicatedStore(
            a,
            [b for b in voters if b != a],
            os.path.join(str(tmp_path), f"v{i}"),
            password="pw",
            compaction_entries=150,
        )
        for i, a in enumerate(voters)
    ]
    learner = ReplicatedStore(
        learner_address, voters, os.path.join(str(tmp_path), "learner"), password="pw", learner=True
    )
    for s in stores:
        s.start(loop)
    try:
        if not late:
            learner.start(loop)
        for i in range(400):  # past compactions (every 150 entries on the voters)
            assert (await stores[i % 3].put(f"k{i}", i, timeout=10))["status"] == "ok"
        if late:
            learner.start(loop)
        assert learner._promotion is not None
        learner._promotion.cancel()  # the test promotes it itself, at a known point
        for _ in range(400):  # bounded: the learner replicates everything
            if learner.get("k399") is not None:
                break
            await asyncio.sleep(0.05)
        assert learner.get("k399") is not None
        await stores[0].change_membership("add", learner_address, timeout=15)
        for _ in range(400):
            if learner.raft.promotion_ready(learner_address):
                break
            await asyncio.sleep(0.05)
        assert learner.raft.promotion_ready(learner_address)
        revision = learner.revision

        def promote_then_read() -> tuple[Any, int]:
            learner._promote()
            return learner.get("k399"), learner.revision

        loads = learner.load_count
        value, seen = await asyncio.to_thread(promote_then_read)
        assert value is not None and value.value == 399, "the restarted node served an older state"
        assert seen >= revision
        assert not learner.is_learner
        assert (await learner.put("after", 1, timeout=10))["status"] == "ok"
        assert learner.get("after") is not None and learner.get("k0") is not None
        assert learner.load_count == loads + 1, "one load: when the rebuilt state took over"
        for _ in range(200):  # bounded: the voter has applied "after" too
            if stores[0].get("after") is not None:
                break
            await asyncio.sleep(0.05)
        mine, _ = learner.range("")
        theirs, _ = stores[0].range("")
        assert [(kv.key, kv.version, kv.mod_revision) for kv in mine] == [
            (kv.key, kv.version, kv.mod_revision) for kv in theirs
        ], "the rebuilt state differs from the voters'"
    finally:
        for s in [*stores, learner]:
            s.close()


async def test_a_learner_does_not_promote_before_it_holds_what_the_leader_committed(tmp_path: Any) -> None:
    """The promotion guard compares the learner's last entry with the leader's commit
    index. PySyncObj keeps that index capped at the entries this message verified, which
    on a learner catching up is always its own last one: the guard passed after the
    first batch. A wiped node rejoining on a snapshot older than its own removal then
    promoted on the stale member list, was never added, and stayed without quorum for
    good (chaos seed 12, 2026-12-07)."""
    loop = asyncio.get_running_loop()
    stores = await in_process_stores(tmp_path)
    learner_address = f"127.0.0.1:{free_ports(1)[0]}"
    voters = [s._raft_address for s in stores]
    learner = ReplicatedStore(
        learner_address, voters, os.path.join(str(tmp_path), "learner"), password="pw", learner=True
    )
    try:
        leader = (await settled_stores(stores))[0]
        learner.start(loop)
        assert learner._promotion is not None
        learner._promotion.cancel()  # the test asks the guard itself
        await leader.change_membership("add", learner_address, timeout=15)
        for _ in range(400):  # bounded: the learner holds the committed add
            if learner.raft.promotion_ready(learner_address):
                break
            await asyncio.sleep(0.05)
        assert learner.raft.promotion_ready(learner_address)
        raft = learner.raft
        leader_node = next(n for n in raft._other_nodes() if n.id == leader._raft_address)

        def leader_ahead() -> tuple[int | None, bool, int]:
            # The leader's heartbeat when it has committed 50 entries the learner lacks.
            log_ = raft._SyncObj__raftLog
            last, term = int(log_[-1][1]), int(log_[-1][2])
            message = {
                "type": "append_entries",
                "term": raft.raftCurrentTerm,
                "prevLogIdx": last,
                "prevLogTerm": term,
                "entries": [],
                "commit_index": last + 50,
            }
            raft._SyncObj__onMessageReceived(leader_node, message)
            return raft.status(1.0).leader_commit_index, raft.promotion_ready(learner_address), last

        heard, ready, last = on_tick(raft, leader_ahead)
        assert not ready, "a learner 50 entries behind the leader's commit index may not promote"
        assert heard == last + 50  # /v1/status shows the leader's commit index as sent
    finally:
        for s in [*stores, learner]:
            s.close()
