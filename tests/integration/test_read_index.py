"""Linearizable reads by ReadIndex on in-process replicas: no log entry per read, the
leader's round of AppendEntries confirms it, and a leader that no majority answers
serves no read."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from rdb import NoQuorum
from rdb._election import PreVoteRound
from rdb._raft import PRE_VOTE_REPLY
from tests.integration.cluster import in_process_stores, on_tick, settled_stores

pytestmark = pytest.mark.integration


async def test_linearizable_reads_add_no_log_entry(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        for s in stores:
            await s.linearizable_barrier(timeout=10)
        last = {s._raft_address: s.raft._rdb_journal.last_index for s in stores}
        rounds = leader.raft.read_index_rounds
        for store in [leader, *followers]:
            await asyncio.gather(*(store.linearizable_barrier(timeout=10) for _ in range(30)))
        # A read through the log (the barrier before ReadIndex) appended an entry per
        # batch of reads, on every node.
        assert {s._raft_address: s.raft._rdb_journal.last_index for s in stores} == last
        assert leader.raft.read_index_rounds > rounds
    finally:
        for s in stores:
            s.close()


async def test_concurrent_reads_share_one_round_in_flight(tmp_path: Any) -> None:
    """Reads that arrive while a round is in flight wait for the next one together: 200
    concurrent reads through a follower take two rounds (the first read's, and the one
    all the others share), not one per read or one per pipelined slot."""
    stores = await in_process_stores(tmp_path)
    try:
        _, followers = await settled_stores(stores)
        follower = followers[0]
        await follower.linearizable_barrier(timeout=10)
        before = follower.barriers_proposed
        await asyncio.gather(*(follower.linearizable_barrier(timeout=10) for _ in range(200)))
        assert follower.barriers_proposed - before == 2
    finally:
        for s in stores:
            s.close()


async def test_a_read_through_any_node_sees_every_write_acknowledged_before_it(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        await settled_stores(stores)
        for i in range(40):
            writer = stores[i % 3]
            reader = stores[(i + 1) % 3]
            result = await writer.put("register", i, timeout=10)
            assert result["status"] == "ok"
            await reader.linearizable_barrier(timeout=10)
            kv = reader.get("register")
            assert kv is not None and kv.value == i, (i, reader._raft_address, kv)
            assert reader.revision >= result["revision"]
    finally:
        for s in stores:
            s.close()


async def test_a_leader_no_majority_answers_serves_no_read(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        await leader.linearizable_barrier(timeout=10)
        for f in followers:
            f.close()  # the leader still believes it leads (for up to leaderFallbackTimeout)
        assert leader.raft._isLeader()
        # Its commit index is as good as ever, but it cannot prove it still leads: a
        # read answered from it could miss writes of a newer leader.
        with pytest.raises(NoQuorum):
            await leader.linearizable_barrier(timeout=1.0)
    finally:
        for s in stores:
            s.close()


async def test_a_follower_cut_off_from_the_leader_serves_no_read(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        reader = followers[0]
        await reader.linearizable_barrier(timeout=10)
        leader.close()
        followers[1].close()
        with pytest.raises(NoQuorum):
            await reader.linearizable_barrier(timeout=1.0)
    finally:
        for s in stores:
            s.close()


async def test_the_leader_sends_one_round_for_a_drain_of_commands_not_one_per_command(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, _ = await settled_stores(stores)
        rounds = leader.raft.probe_round
        results = await asyncio.gather(*(leader.put(f"k{i}", i, timeout=10) for i in range(200)))
        assert all(r["status"] == "ok" for r in results)
        # PySyncObj (batching off) sent a round of AppendEntries after each command it
        # appended: 200 at least. Heartbeats and commit notices add a few.
        assert leader.raft.probe_round - rounds < 100, leader.raft.probe_round - rounds
    finally:
        for s in stores:
            s.close()


class _Extreme(random.Random):
    """Draws the lowest (or the highest) value of every range asked of it."""

    def __init__(self, *, highest: bool) -> None:
        super().__init__(0)
        self._highest = highest

    def uniform(self, a: float, b: float) -> float:
        return b if self._highest else a


async def test_a_dead_leader_is_replaced_before_an_election_timeout(tmp_path: Any) -> None:
    """Its process died: its sockets close, so the followers stand after a short pause
    (pre-vote agreed, as neither has a link to it) instead of a whole election timeout
    (0.6-1.2 s from the last heartbeat: 0.5 s at least). The followers' pauses are the
    shortest and the longest of the range (0.05 and 0.3 s), so one stands well before the
    other: the test is about the pause, not about the luck of the draw."""
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        term = leader.raft.raftCurrentTerm
        followers[0].raft._rng = _Extreme(highest=False)
        followers[1].raft._rng = _Extreme(highest=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # Only a link that is up can be seen to close.
        while not all(f.raft._SyncObj__raftLeader in f.raft._SyncObj__connectedNodes for f in followers):
            assert loop.time() < deadline, "the followers never connected to the leader"
            await asyncio.sleep(0.01)
        killed_at = loop.time()
        leader.close()
        while not any(f.raft._isLeader() for f in followers):
            assert loop.time() - killed_at < 5.0, "no new leader"
            await asyncio.sleep(0.005)
        elapsed = loop.time() - killed_at
        assert elapsed < 0.5, elapsed
        assert followers[0].raft._isLeader()  # the one whose pause ended first
        assert max(f.raft.raftCurrentTerm for f in followers) == term + 1  # one election, no split
        assert sum(f.raft.leader_losses for f in followers) >= 1
    finally:
        for s in stores:
            s.close()


async def test_a_follower_that_times_out_alone_does_not_depose_a_live_leader(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        term = leader.raft.raftCurrentTerm
        lonely = followers[0].raft

        def time_out() -> None:  # as if its leader's heartbeats had stopped reaching it
            lonely._SyncObj__raftElectionDeadline = 0.0

        lonely.addOnTickCallback(time_out)
        await asyncio.sleep(0.3)
        lonely.removeOnTickCallback(time_out)
        # It asked first, and never stood while the leader was alive (a vote without
        # asking raised the term and deposed the leader). On a loaded host the other
        # follower may miss heartbeats for a while and say yes; a heartbeat reaching the
        # asker first still voids that yes, so the term holds either way.
        assert leader.raft._isLeader()
        assert {s.raft.raftCurrentTerm for s in stores} == {term}
        assert lonely.pre_votes_started >= 1
        assert (await followers[0].put("still", 1, timeout=5))["status"] == "ok"
    finally:
        for s in stores:
            s.close()


async def test_a_node_refused_by_a_voter_of_a_newer_term_takes_that_term(tmp_path: Any) -> None:
    """Pre-votes change no term: a node with the longest log but an older term, and one
    with a newer term but a shorter log, would refuse each other for ever. A refusal
    carries the voter's term, and the node takes it (as any Raft message would make it),
    so its next question can be answered yes."""
    stores = await in_process_stores(tmp_path)
    try:
        _, followers = await settled_stores(stores)
        raft = followers[0].raft
        voter = next(n for n in raft._other_nodes())

        def refused_by_newer_term() -> int:
            raft._pre_vote = PreVoteRound(raft.raftCurrentTerm + 1, expires=time.monotonic() + 10)
            newer = raft.raftCurrentTerm + 5
            reply = {"type": PRE_VOTE_REPLY, "term": raft.raftCurrentTerm + 1, "granted": False, "voter_term": newer}
            raft._SyncObj__onMessageReceived(voter, reply)
            return newer

        newer = on_tick(raft, refused_by_newer_term)
        assert raft.raftCurrentTerm >= newer
    finally:
        for s in stores:
            s.close()
