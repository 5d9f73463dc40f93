"""Raft message handling on in-process replicas: acknowledgements of another term, and
an AppendEntries whose matching tail holds a membership change.

Messages are injected on the node's own tick thread (a one-shot tick callback), as
PySyncObj would deliver them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rdb._raft import RaftNode
from tests.integration.cluster import free_ports, in_process_stores, on_tick, settled_stores

pytestmark = pytest.mark.integration


async def test_the_leader_ignores_an_acknowledgement_of_another_term(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader = (await settled_stores(stores))[0]
        raft = leader.raft
        others = [s for s in stores if s is not leader]
        silent = others[0]
        silent_node = next(n for n in raft._other_nodes() if n.id == silent._raft_address)
        silent.close()  # it acknowledges nothing from now on
        for i in range(5):
            assert (await leader.put(f"k{i}", i))["status"] == "ok"
        last = raft._rdb_journal.last_index

        def deliver(term: int) -> int:
            ack = {"type": "next_node_idx", "next_node_idx": last + 1, "success": True, "reset": False, "term": term}
            raft._SyncObj__onMessageReceived(silent_node, ack)
            return int(raft._SyncObj__raftMatchIndex[silent_node])

        before = on_tick(raft, lambda: int(raft._SyncObj__raftMatchIndex[silent_node]))
        assert before < last
        # An ack held back in an older term, released late: it says nothing about the
        # entries of this term at those indexes.
        assert on_tick(raft, lambda: deliver(raft.raftCurrentTerm - 1)) == before
        assert raft.stale_acks_ignored >= 1
        # The same ack in this term counts (the injection does reach the leader).
        assert on_tick(raft, lambda: deliver(raft.raftCurrentTerm)) == last
    finally:
        for s in stores:
            s.close()


async def test_followers_stamp_acknowledgements_with_their_term(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader = (await settled_stores(stores))[0]
        seen: list[Any] = []
        raft = leader.raft
        real = raft._SyncObj__onMessageReceived

        def spy(node: Any, message: Any) -> None:
            if message.get("type") == "next_node_idx":
                seen.append(message.get("term"))
            real(node, message)

        raft._SyncObj__onMessageReceived = spy  # instance attribute: only this node
        raft._SyncObj__transport.setOnMessageReceivedCallback(spy)
        for i in range(5):
            assert (await leader.put(f"s{i}", i))["status"] == "ok"
        assert seen and set(seen) == {raft.raftCurrentTerm}
    finally:
        for s in stores:
            s.close()


async def test_a_matching_tail_with_a_membership_change_is_not_truncated(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader = (await settled_stores(stores))[0]
        ghost = f"127.0.0.1:{free_ports(1)[0]}"  # a fourth member that never answers
        await leader.change_membership("add", ghost, timeout=15)
        follower = next(s for s in stores if s is not leader)
        raft = follower.raft

        def find_change() -> int:
            log_ = raft._SyncObj__raftLog
            parse = raft._SyncObj__parseChangeClusterRequest
            return next(int(log_[i][1]) for i in range(len(log_)) if parse(log_[i][0]) is not None)

        for _ in range(200):  # bounded: the follower receives the entry
            try:
                change = on_tick(raft, find_change)
                break
            except StopIteration:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the follower never got the membership entry")

        def heartbeat_from_a_new_term() -> tuple[int, int, int, set[str]]:
            log_ = raft._SyncObj__raftLog
            first = log_[0][1]
            before = raft._rdb_journal.last_index
            message = {
                "type": "append_entries",
                "term": raft.raftCurrentTerm + 1,  # nothing of this term is verified yet
                "prevLogIdx": change - 1,
                "prevLogTerm": log_[change - 1 - first][2],
                "entries": [],
                "commit_index": 0,
            }
            raft._SyncObj__onMessageReceived(raft._SyncObj__raftLeader, message)
            members = {n.id for n in raft._other_nodes()}
            return before, raft._rdb_journal.last_index, raft.suppressed_truncations, members

        before, after, suppressed, members = on_tick(raft, heartbeat_from_a_new_term)
        # Every entry matched: nothing may be cut, and the kept membership change stays
        # in effect (PySyncObj truncated from the change and reverted it).
        assert after == before
        assert suppressed >= 1
        assert ghost in members
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("serialized", [None, (b"part of a snapshot", True, False)], ids=["empty", "first_chunk"])
async def test_a_snapshot_chunk_never_commits_the_followers_unverified_tail(tmp_path: Any, serialized: Any) -> None:
    """A deposed leader's log can end in entries no majority ever held. A message of the
    new leader that verifies none of our log (a snapshot being sent, chunk by chunk) must
    not let us adopt its commit index over that tail: PySyncObj did, and the node applied
    (and served, and streamed to watchers) a write that was never committed."""
    from pysyncobj import pickle as raft_pickle

    from rdb import _commands

    stores = await in_process_stores(tmp_path)
    try:
        leader = (await settled_stores(stores))[0]
        assert (await leader.put("before", 1))["status"] == "ok"
        follower = next(s for s in stores if s is not leader)
        raft = follower.raft
        for _ in range(200):  # bounded: the follower applies what the leader committed
            if follower.get("before") is not None:
                break
            await asyncio.sleep(0.05)
        leader_node = next(n for n in raft._other_nodes() if n.id == leader._raft_address)

        def stale_tail_then_chunk() -> tuple[int, int, int]:
            log_ = raft._SyncObj__raftLog
            last, term = int(log_[-1][1]), int(log_[-1][2])
            # A replicated call as PySyncObj logs it, holding a put nobody committed.
            template = next(e[0] for e in reversed(list(log_)) if e[0][:1] == bytes([0]) and len(e[0]) > 1)
            func = raft_pickle.loads(template[1:])[0]
            phantom = _commands.put("phantom", 1, request_id="phantom-1")
            raft._SyncObj__raftLog.add(bytes([0]) + raft_pickle.dumps((func, (phantom,))), last + 1, term)
            commit_before = int(raft.raftCommitIndex)
            message = {
                "type": "append_entries",
                "term": raft.raftCurrentTerm + 1,
                "commit_index": last + 1,
                "serialized": serialized,
            }
            raft._SyncObj__onMessageReceived(leader_node, message)
            return commit_before, int(raft.raftCommitIndex), last + 1

        commit_before, commit_after, phantom_index = on_tick(raft, stale_tail_then_chunk)
        assert commit_before < phantom_index
        assert commit_after < phantom_index, "the unverified tail was committed"
        for _ in range(5):  # a few ticks: nothing applies the phantom entry
            on_tick(raft, lambda: None)
        assert follower.get("phantom") is None
    finally:
        for s in stores:
            s.close()


async def test_the_leader_sends_entries_before_its_own_fsync_and_followers_acks_wait_for_theirs(
    tmp_path: Any,
) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader = (await settled_stores(stores))[0]
        follower = next(s for s in stores if s is not leader)
        for raft in (leader.raft, follower.raft):

            def send_while_dirty(raft: RaftNode = raft) -> tuple[int, int]:
                transport = raft._SyncObj__transport
                journal = raft._rdb_journal
                assert not transport._held and not journal.dirty
                journal._pending += b"unsynced"  # as if an entry were waiting for the fsync
                try:
                    peer = raft._other_nodes()[0]
                    last = journal.last_index
                    heartbeat = {
                        "type": "append_entries",
                        "term": raft.raftCurrentTerm,
                        "commit_index": raft.raftCommitIndex,
                        "entries": [],
                        "prevLogIdx": last,
                        "prevLogTerm": journal[last - journal[0][1]][2],
                    }
                    transport.send(peer, heartbeat)
                    after_append = len(transport._held)
                    ack = {"type": "next_node_idx", "next_node_idx": last + 1, "reset": False, "success": True}
                    transport.send(peer, dict(ack, term=raft.raftCurrentTerm))
                    return after_append, len(transport._held)
                finally:
                    journal._pending.clear()
                    transport._held.clear()

            held = on_tick(raft, send_while_dirty)
            if raft is leader.raft:
                # Its AppendEntries leaves at once; anything after a held message waits.
                assert held == (0, 1)
            else:
                # A follower holds everything while it has entries not on disk.
                assert held == (1, 2)
    finally:
        for s in stores:
            s.close()
