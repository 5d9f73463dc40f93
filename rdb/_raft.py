"""The only module that touches PySyncObj.

``RaftNode`` is a ``SyncObj`` subclass that fixes what 0.3.17 gets wrong
(see shared/PYSYNCOBJ.md):

- durability: a ``DurableJournal`` replaces the mmap journal. While it holds unsynced
  entries, every outgoing Raft message is held back; once per tick (and before the
  leader counts itself toward a commit) the journal is fsynced and the held messages are
  released. A follower therefore never acknowledges an entry that is not on its disk,
  and one fsync covers every entry that arrived in the same poll batch (group commit);
- truncation: AppendEntries are rewritten by ``plan_append`` so a follower truncates only
  on a real conflict, and the leader never moves ``nextIndex`` backwards on a success
  reply (which caused the re-send storms);
- snapshots: written by our serializer (temporary file, fsync; the rename is followed by
  a directory fsync before the journal drops the entries), never forked;
- one replicated entry point, ``_rdb_apply(payload)``, carrying our msgpack command;
- the wire: messages are framed as zlib *stored* blocks, not compressed (``rdb._wire``).

Threading: everything here runs on PySyncObj's tick thread, except ``propose``,
``status`` and the membership calls, which are safe from any thread (they only enqueue
or read plain attributes).
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj import syncobj as _pysyncobj_module
from pysyncobj import tcp_connection as _pysyncobj_tcp
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from rdb._append import coalesce_outgoing, plan_append
from rdb._journal import DurableJournal, fsync_directory
from rdb._raft_membership import MembershipRules, disable_utility_membership
from rdb._wire import StoredZlib

log = logging.getLogger("rdb.raft")

_FOLLOWER, _CANDIDATE, _LEADER = 0, 1, 2
ROLE_NAMES = {_FOLLOWER: "follower", _CANDIDATE: "candidate", _LEADER: "leader"}

#: Outcomes that mean "not applied, and never will be".
NOT_APPLIED_REASONS = frozenset(
    {
        FAIL_REASON.QUEUE_FULL,
        FAIL_REASON.MISSING_LEADER,
        FAIL_REASON.DISCARDED,
        FAIL_REASON.NOT_LEADER,
        FAIL_REASON.REQUEST_DENIED,
    }
)
REASON_NAMES = {
    FAIL_REASON.SUCCESS: "success",
    FAIL_REASON.QUEUE_FULL: "queue_full",
    FAIL_REASON.MISSING_LEADER: "missing_leader",
    FAIL_REASON.DISCARDED: "discarded",
    FAIL_REASON.NOT_LEADER: "not_leader",
    FAIL_REASON.LEADER_CHANGED: "leader_changed",
    FAIL_REASON.REQUEST_DENIED: "request_denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "unknown_outcome",
}

_SNAPSHOT_MAGIC = b"RDBSNAP1"
COMPACT_AT_BYTES = 64 * 1024 * 1024
CONNECTION_RETRY_SECONDS = 0.2


# Every Raft message went through a fresh zlib deflate stream (~50 us each, on the
# leader's single tick thread); send stored blocks instead (see rdb._wire).
_pysyncobj_tcp.zlib = StoredZlib


class _JournalPath(str):
    """Marks a journal path that must get a ``DurableJournal`` (see ``_create_journal``)."""


_original_create_journal = _pysyncobj_module.createJournal


def _create_journal(journal_file: Any = None) -> Any:
    # SyncObj.__init__ calls the module-level createJournal; this is the narrowest seam to
    # give it our journal without copying its constructor. Plain paths keep the old one.
    if isinstance(journal_file, _JournalPath):
        return DurableJournal(str(journal_file))
    return _original_create_journal(journal_file)


_pysyncobj_module.createJournal = _create_journal


def _no_flush() -> None:
    """Stands in for a connection's flush while ``release_held`` fills its buffer."""


class _HoldingTransport(TCPTransport):  # type: ignore[misc]
    """TCP transport that holds every outgoing message while the journal is dirty."""

    def __init__(self, sync_obj: Any, self_node: Any, other_nodes: Any) -> None:
        self._held: list[tuple[Any, Any]] = []
        self.sent_held = 0  # messages held back for a group commit...
        self.sent_merged = 0  # ...and how many actually left after coalescing
        super().__init__(sync_obj, self_node, other_nodes)

    def send(self, node: Any, message: Any) -> bool:
        journal = getattr(self._syncObj, "_rdb_journal", None)
        if journal is not None and (journal.dirty or self._held):
            self._held.append((node, message))
            return True
        return bool(super().send(node, message))

    def release_held(self) -> None:
        held, self._held = self._held, []
        self.sent_held += len(held)
        merged = coalesce_outgoing(held)
        self.sent_merged += len(merged)
        if len(merged) <= 1:
            for node, message in merged:
                super().send(node, message)
            return
        # One send() system call per connection, not one per message: each connection
        # only appends to its buffer (its flush method is shadowed on the instance), then
        # flushes once. Runs on the tick thread, the only one that sends.
        conns = {id(c): c for node, _ in merged if (c := self._connections.get(node)) is not None}
        for conn in conns.values():
            conn._TcpConnection__trySendBuffer = _no_flush
        try:
            for node, message in merged:
                super().send(node, message)
        finally:
            for conn in conns.values():
                del conn._TcpConnection__trySendBuffer
            for conn in conns.values():
                conn._TcpConnection__trySendBuffer()


@dataclass(frozen=True, slots=True)
class RaftStatus:
    role: str
    term: int
    leader: str | None
    commit_index: int
    applied_index: int
    leader_commit_index: int | None  # the newest commit index heard from the leader
    last_index: int
    quorum: bool
    members: list[str]
    connected: list[str]
    journal_syncs: int
    journal_bytes: int
    messages_held: int  # Raft messages held back for group commits...
    messages_sent_after_merge: int  # ...and how many left after coalescing
    truncations_below_commit: int
    suppressed_truncations: int


def dump_snapshot(path: str, state: bytes, last: Any, prev: Any, cluster: list[str]) -> None:
    """Write a snapshot file with fsync (the caller renames it and fsyncs the dir)."""
    body = msgpack.packb(
        {"state": state, "last": list(last), "prev": list(prev), "cluster": cluster}, use_bin_type=True
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = _SNAPSHOT_MAGIC + struct.pack("<Q", len(body)) + body
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def load_snapshot(path: str) -> tuple[bytes, Any, Any, list[str]]:
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != _SNAPSHOT_MAGIC:
        raise ValueError(f"{path} is not an rdbsync snapshot")
    (length,) = struct.unpack_from("<Q", data, 8)
    body = data[16 : 16 + length]
    if len(body) != length:
        raise ValueError(f"{path} is truncated")
    doc = msgpack.unpackb(body, raw=False)
    return doc["state"], doc["last"], doc["prev"], list(doc["cluster"])


class RaftNode(MembershipRules, SyncObj):  # type: ignore[misc]
    """PySyncObj node with our durability, truncation, snapshot and membership fixes.

    ``self_address`` None makes a *learner*: it replicates the log without voting
    (PySyncObj's read-only node; see ``rdb._raft_membership``).

    ``apply_fn(payload, index)`` runs on the tick thread for every committed command, in
    log order, and must never raise. ``snapshot_fn()`` returns the state as bytes;
    ``restore_fn(state, index)`` replaces it (a *load event*: snapshot install or
    restart from a dump).
    """

    def __init__(
        self,
        self_address: str | None,
        partner_addresses: list[str],
        data_dir: str,
        *,
        password: str,
        apply_fn: Callable[[bytes, int], Any],
        snapshot_fn: Callable[[], bytes],
        restore_fn: Callable[[bytes, int], None],
        compaction_entries: int = 20_000,
        compaction_seconds: float = 300.0,
        election_timeout: tuple[float, float] = (0.6, 1.2),
    ) -> None:
        self._apply_fn = apply_fn
        self._snapshot_fn = snapshot_fn
        self._restore_fn = restore_fn
        self._data_dir = data_dir
        self._verified_term = -1
        self._verified_index = 0
        self._suppress_truncation = False
        self.truncations_below_commit = 0
        self.suppressed_truncations = 0
        self.last_leader_contact = 0.0
        self.append_decisions: dict[str, int] = {}
        self._last_forced_compaction = 0.0
        self._wake_pending = False
        #: Called with the seconds each group-commit fdatasync took (tick thread).
        self.on_fsync: Callable[[float], None] | None = None
        os.makedirs(data_dir, exist_ok=True)
        dump = os.path.join(data_dir, "raft.snapshot")
        conf = SyncObjConf(
            password=password,
            journalFile=_JournalPath(os.path.join(data_dir, "raft.journal")),
            fullDumpFile=dump,
            serializer=self._serialize_to,
            deserializer=self._deserialize_from,
            useFork=False,
            appendEntriesUseBatch=False,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            raftMinTimeout=election_timeout[0],
            raftMaxTimeout=election_timeout[1],
            appendEntriesPeriod=0.1,
            connectionTimeout=max(3.5, election_timeout[1]),
            # PySyncObj redials a lost peer only every 5 s, and only the node with the
            # higher address dials. Two followers whose link dropped (one restarted) then
            # cannot elect a new leader for up to 5 s after the leader dies.
            connectionRetryTime=CONNECTION_RETRY_SECONDS,
            leaderFallbackTimeout=max(2.0, election_timeout[1] * 1.5),
            # Larger than any single entry (1 MiB values), so PySyncObj never takes its
            # buggy chunked-transmission path for one big entry.
            appendEntriesBatchSizeBytes=4 * 1024 * 1024,
            logCompactionMinEntries=compaction_entries,
            logCompactionMinTime=compaction_seconds,
            logCompactionSplit=False,
        )
        super().__init__(self_address, partner_addresses, conf=conf, transportClass=_HoldingTransport)
        disable_utility_membership(self._SyncObj__transport)
        self.addOnTickCallback(self._persist_and_release)

    # ------------------------------------------------------------ the log entry point

    @replicated  # type: ignore[untyped-decorator]
    def _rdb_apply(self, payload: bytes) -> Any:
        # raftLastApplied is incremented after this returns: +1 is this entry's index.
        return self._apply_fn(payload, self.raftLastApplied + 1)

    # ------------------------------------------------------------ waking the tick thread

    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:  # noqa: N802,N803
        # PySyncObj writes to its wake-up pipe for every queued command (a system call
        # each, from the HTTP loop and the tick thread alike); one pending wake-up is
        # enough. The flag is cleared before the queue is drained (below), so a command
        # queued after the drain began always sends a fresh wake-up: none is lost.
        commands = self._SyncObj__commandsQueue
        try:
            commands.put_nowait(
                (command, callback) if commandType is None else (bytes([commandType]) + command, callback)
            )
        except queue.Full:
            self._SyncObj__callErrCallback(FAIL_REASON.QUEUE_FULL, callback)
            return
        if not self._wake_pending:
            self._wake_pending = True
            self._SyncObj__pipeNotifier.notify()

    def _checkCommandsToApply(self) -> None:  # noqa: N802
        self._wake_pending = False
        super()._checkCommandsToApply()

    def propose(self, payload: bytes, callback: Callable[[Any, int], None]) -> None:
        """Queue ``payload`` for the log. ``callback(result, reason)`` runs on the tick
        thread once; ``reason`` is a ``FAIL_REASON``. Safe from any thread."""
        self._rdb_apply(payload, callback=callback)

    # ------------------------------------------------------------ durability

    @property
    def _rdb_journal(self) -> DurableJournal:
        journal: DurableJournal = self._SyncObj__raftLog
        return journal

    def _persist_and_release(self) -> None:
        try:
            started = time.perf_counter()
            if self._rdb_journal.sync() and self.on_fsync is not None:
                self.on_fsync(time.perf_counter() - started)
        except OSError:
            # fsync failed: what was acknowledged may not be on disk. PySyncObj would
            # retry the tick forever; a broken durability invariant must crash loudly.
            log.critical("journal fsync failed; stopping this node", exc_info=True, extra={"event": "fsync_failed"})
            os._exit(70)
        self._SyncObj__transport.release_held()
        # PySyncObj compacts by entry count only: big values must not grow the journal
        # (held in memory too) without bound, so compact by size as well.
        journal = self._rdb_journal
        if journal.size_bytes > COMPACT_AT_BYTES and time.monotonic() - self._last_forced_compaction > 5.0:
            self._last_forced_compaction = time.monotonic()
            self.forceLogCompaction()

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 - PySyncObj's name
        # Entries added while polling (a new leader's no-op, follower appends) become
        # durable before the leader's commit count below, which counts itself.
        if getattr(self, "_SyncObj__transport", None) is not None and self._SyncObj__transport.ready:
            self._persist_and_release()
        super()._onTick(timeToWait)

    # ------------------------------------------------------------ truncation fix

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        mtype = message.get("type")
        if mtype == "append_entries" and message.get("term", -1) >= self.raftCurrentTerm:
            self.last_leader_contact = time.monotonic()
            if "prevLogIdx" in message and "transmission" not in message:
                message = self._rewrite_append(message)
        if mtype == "next_node_idx" and message.get("success") and not message.get("reset"):
            next_index = self._SyncObj__raftNextIndex
            before = next_index.get(node)
            super()._SyncObj__onMessageReceived(node, message)
            if before is not None and node in next_index and next_index[node] < before:
                next_index[node] = before  # never re-send what is already in flight
            return
        try:
            super()._SyncObj__onMessageReceived(node, message)
        finally:
            self._suppress_truncation = False

    def _rewrite_append(self, message: dict[str, Any]) -> dict[str, Any]:
        term = message["term"]
        if term != self._verified_term:
            self._verified_term, self._verified_index = term, 0
        log_ = self._SyncObj__raftLog
        first = log_[0][1]
        last = log_[-1][1]

        def term_at(index: int) -> int | None:
            if index is None or index < first or index > last:
                return None
            entry = log_[index - first]
            return int(entry[2])

        plan = plan_append(
            term_at,
            last,
            message["prevLogIdx"],
            message["prevLogTerm"],
            message.get("entries", []),
            self._verified_index,
        )
        if plan is None:
            return message
        self.append_decisions[plan.decision] = self.append_decisions.get(plan.decision, 0) + 1
        if plan.suppress_truncation and self._tail_has_membership_change(plan.prev_index):
            # PySyncObj would roll back membership entries in the tail before cutting it;
            # keep its behaviour there rather than leave the membership half-reverted.
            return message
        rewritten = dict(message)
        rewritten["prevLogIdx"], rewritten["prevLogTerm"] = plan.prev_index, plan.prev_term
        rewritten["entries"] = plan.entries
        new_last = plan.entries[-1][1] if plan.entries else last
        self._verified_index = max(plan.verified_index, min(self._verified_index, new_last))
        rewritten["commit_index"] = min(message["commit_index"], self._verified_index)
        self._suppress_truncation = plan.suppress_truncation
        return rewritten

    def _tail_has_membership_change(self, after_index: int) -> bool:
        log_ = self._SyncObj__raftLog
        first = log_[0][1]
        parse = self._SyncObj__parseChangeClusterRequest
        return any(parse(log_[i][0]) is not None for i in range(after_index - first + 1, len(log_)))

    def _SyncObj__deleteEntriesFrom(self, fromIDx: int) -> None:  # noqa: N802,N803
        if self._suppress_truncation:
            self.suppressed_truncations += 1
            return
        if fromIDx <= self.raftCommitIndex:
            self.truncations_below_commit += 1
            log.critical(
                "truncating committed entries",
                extra={
                    "event": "committed_entries_truncated",
                    "fields": {"from_index": fromIDx, "commit_index": self.raftCommitIndex},
                },
            )
        super()._SyncObj__deleteEntriesFrom(fromIDx)

    # ------------------------------------------------------------ snapshots

    def _serialize_to(self, tmp_path: str, raft_data: Any) -> None:
        last, prev, cluster = raft_data
        # A learner has no node of its own (None) in PySyncObj's cluster set.
        dump_snapshot(tmp_path, self._snapshot_fn(), last, prev, sorted(n.id for n in cluster if n is not None))

    def _deserialize_from(self, path: str) -> tuple[Any, Any, Any]:
        state, last, prev, cluster = load_snapshot(path)
        # An installed snapshot arrives through PySyncObj's un-fsynced rename: make it
        # durable before anything acknowledges it.
        os.chmod(path, 0o600)  # PySyncObj writes an installed snapshot with the umask's mode
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(self._data_dir)
        self._restore_fn(state, int(last[1]))
        return tuple(last), tuple(prev), {TCPNode(n) for n in cluster}

    # ------------------------------------------------------------ status

    def quorum_age(self) -> float:
        """Seconds since this node last knew a majority was with it: for a leader, since
        the majority-th freshest follower answered; for a follower, since its leader
        last reached it. Cheap, safe from any thread, and it keeps counting while the
        process is stopped (CLOCK_MONOTONIC), so a node waking from SIGSTOP sees it."""
        now = time.monotonic()
        if self._SyncObj__raftState != _LEADER:
            # Also during an election (no leader known): the grace period runs from the
            # last contact with the old leader, not from the election's start.
            return now - self.last_leader_contact
        others = self._other_nodes()
        responses = self._SyncObj__lastResponseTime
        times = sorted((responses.get(n, 0.0) for n in others), reverse=True)
        needed = (len(others) + 1) // 2  # followers needed with the leader for a majority
        return 0.0 if needed == 0 else now - times[needed - 1] if len(times) >= needed else float("inf")

    def status(self, quorum_window: float) -> RaftStatus:
        """A consistent-enough view for /v1/status. Safe from any thread."""
        role = "learner" if self.is_learner else ROLE_NAMES.get(self._SyncObj__raftState, "follower")
        leader = self._SyncObj__raftLeader
        now = time.monotonic()
        others = self._other_nodes()
        if role == "leader":
            responses = self._SyncObj__lastResponseTime
            fresh = sum(1 for n in others if responses.get(n, 0.0) > now - quorum_window)
            quorum = fresh + 1 > (len(others) + 1) / 2
        else:
            quorum = leader is not None and now - self.last_leader_contact < quorum_window
        journal = self._rdb_journal
        return RaftStatus(
            role=role,
            term=int(self.raftCurrentTerm),
            leader=None if leader is None else str(leader.id),
            commit_index=int(self.raftCommitIndex),
            leader_commit_index=self._SyncObj__leaderCommitIndex,
            applied_index=int(self.raftLastApplied),
            last_index=journal.last_index,
            quorum=quorum,
            members=sorted(([self.selfNode.id] if self.selfNode is not None else []) + [n.id for n in others]),
            connected=sorted(n.id for n in others if self.isNodeConnected(n)),
            journal_syncs=journal.sync_count,
            journal_bytes=journal.size_bytes,
            messages_held=self._SyncObj__transport.sent_held,
            messages_sent_after_merge=self._SyncObj__transport.sent_merged,
            truncations_below_commit=self.truncations_below_commit,
            suppressed_truncations=self.suppressed_truncations,
        )

    def _other_nodes(self) -> list[Any]:
        # The tick thread may swap this set during a membership change; copy, retrying.
        for _ in range(10):
            try:
                return list(self._SyncObj__otherNodes)
            except RuntimeError:
                continue
        return []

    def add_member(self, address: str, callback: Callable[[Any, int], None]) -> None:
        self.addNodeToCluster(address, callback=callback)

    def remove_member(self, address: str, callback: Callable[[Any, int], None]) -> None:
        self.removeNodeFromCluster(address, callback=callback)
