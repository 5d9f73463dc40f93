"""``ReplicatedStore``: the asyncio face of the replicated state machine.

It owns a ``RaftNode`` (tick thread) and a ``StateMachine`` (guarded by one lock), and
gives the node process:

- ``propose``: put a command in the log with a deadline, retrying what is safe to retry
  (every write carries a request id, so a retry after an unknown outcome applies once);
- ``linearizable_barrier``: a read point by ReadIndex (``RaftNode.read_index``: the
  leader's commit index, confirmed by a round of AppendEntries; no log entry, no fsync).
  Concurrent reads are coalesced onto one round that is *asked after* they all arrived,
  never onto one already in flight (its index could precede a write acknowledged before
  the read); one round is in flight at a time (``MAX_BARRIERS_IN_FLIGHT``);
- ``read(fn)``: run a read-only function on committed state at one revision (what
  the resync engine plans from; its ``Reader`` protocol is the narrow view it needs);
- change and load notifications on the asyncio loop.

Threading: public coroutines run on the asyncio loop given to ``start``. ``_apply`` and
``_restore`` run on PySyncObj's tick thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from pysyncobj.config import FAIL_REASON

from rdb import _commands
from rdb._deadlines import Deadlines
from rdb._errors import InvalidCommand, MembershipChangePending, NoQuorum, NotApplied, OutcomeUnknown, ProposalFailed
from rdb._journal import fsync_directory
from rdb._raft import NOT_APPLIED_REASONS, REASON_NAMES, Leadership, RaftNode, RaftStatus, ReadPosition
from rdb._state import Event, KeyValue, Reference, Result, StateMachine

_RETRY_PAUSE = 0.05
#: Read rounds in flight at once: each read waits for the first one submitted after it.
#: One, as etcd's read loop: reads that arrive during a round share the next one. With
#: four, under 64 connections against a follower, reads/s were 12-23% lower (more rounds,
#: each an AppendEntries round from the leader and a wake-up of both threads) and the p99
#: no better; under 8 connections, lower too.
MAX_BARRIERS_IN_FLIGHT = 1
#: Restore entries proposed ahead of the one awaited.
RESTORE_WINDOW = 2
#: Writes proposed in one pass of the loop share a log entry (``_commands.batch``), up
#: to this many commands and bytes; a command larger than BATCH_SOLO_BYTES goes alone.
BATCH_MAX_COMMANDS = 128
BATCH_MAX_BYTES = 256 * 1024
BATCH_SOLO_BYTES = 16 * 1024
T = TypeVar("T")
log = logging.getLogger("rdb.store")
#: The cluster-wide membership lease (see ``membership_lease``), in the reserved prefix.
MEMBERSHIP_LEASE_KEY = "_rdb/membership_change"
#: In a learner's data directory once it was promoted: it restarts as a voter.
VOTER_MARKER = "voter"


class ReplicatedStore:
    """One node's replica of the store. Create, ``start`` on a loop, ``close`` at exit."""

    def __init__(
        self,
        raft_address: str,
        partner_addresses: list[str],
        data_dir: str,
        *,
        password: str,
        request_timeout: float = 5.0,
        election_timeout: tuple[float, float] = (0.6, 1.2),
        compaction_entries: int = 20_000,
        history_limit: int = 10_000,
        references: Iterable[Reference] = (),
        learner: bool = False,
    ) -> None:
        self._raft_address = raft_address
        # A learner replicates without voting until an entry adding it commits, then
        # restarts as a voter; once promoted (the marker) it starts as a voter.
        self._learner = learner and not os.path.exists(os.path.join(data_dir, VOTER_MARKER))
        self._history_limit = history_limit
        self._partners = partner_addresses
        self._data_dir = data_dir
        self._password = password
        self._election_timeout = election_timeout
        self._compaction_entries = compaction_entries
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._sm = StateMachine(history_limit=history_limit, references=references)
        # After a learner's promotion: the state the restarted Raft node replays into,
        # served once it has applied index ``_rebuild_through`` (see ``_promote``).
        self._rebuild: StateMachine | None = None
        self._rebuild_through = 0
        self._raft: RaftNode | None = None
        self._promotion: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._notify_pending = False
        self._barrier_waiting: list[asyncio.Future[None]] = []
        self._barriers_in_flight = 0
        self._barrier_tasks: set[asyncio.Task[None]] = set()
        self.load_count = 0
        self._load_listeners: list[Callable[[], None]] = []
        self._change_listeners: list[Callable[[], None]] = []
        self.barriers_proposed = 0
        self.last_restore: RestoreProgress | None = None  # the latest restore through this node
        #: (revision, wall time applied here): for commit-to-blade latency figures.
        self.commit_times: deque[tuple[int, float]] = deque(maxlen=20_000)
        #: ``timing(name, seconds)``, for metrics: "commit" (a write from ``propose`` to
        #: its committed result; loop thread), "read_barrier" (a linearizable read's wait;
        #: loop thread), "fsync" (one group-commit fdatasync; Raft tick thread). It must be
        #: quick, thread-safe and must not raise. None: nothing is measured.
        self.timing: Callable[[str, float], None] | None = None
        self._handoff = _Handoff()
        self._deadlines: Deadlines | None = None
        self._batch: list[tuple[bytes, Callable[[Any, int], None]]] = []
        self.entries_batched = 0  # log entries that carried several writes, for tests

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the Raft node. Must be called on ``loop``'s thread."""
        self._loop = loop
        self._changed = asyncio.Event()
        self._raft = self._new_raft(None if self._learner else self._raft_address)
        if self._learner:
            self._promotion = loop.create_task(self._promote_when_added())

    def _new_raft(self, self_address: str | None) -> RaftNode:
        raft = RaftNode(
            self_address,
            self._partners,
            self._data_dir,
            password=self._password,
            apply_fn=self._apply,
            snapshot_fn=self._snapshot,
            restore_fn=self._restore,
            election_timeout=self._election_timeout,
            compaction_entries=self._compaction_entries,
        )
        raft.on_fsync = self._observe_fsync
        return raft

    def _observe_fsync(self, seconds: float) -> None:
        timing = self.timing
        if timing is not None:
            timing("fsync", seconds)

    def close(self) -> None:
        """Stop the tick thread and flush the journal. Blocks until the thread exits."""
        if self._promotion is not None:
            self._promotion.cancel()
        if self._raft is not None:
            self._raft.destroy_synchronous()
            self._raft = None

    @property
    def references(self) -> tuple[Reference, ...]:
        """The referential rules the state machine enforces."""
        return self._sm.references

    @property
    def raft(self) -> RaftNode:
        if self._raft is None:
            raise RuntimeError("store is not started")
        return self._raft

    # --------------------------------------------------------- tick-thread hooks

    def _apply(self, payload: bytes, index: int) -> Result:
        with self._lock:
            # Entries up to ``_rebuild_through`` that change no state (membership) never
            # come here: a later entry means the rebuild holds everything through it.
            swapped = False
            if self._rebuild is not None and index > self._rebuild_through:
                self._end_rebuild()
                swapped = True
            rebuilding = self._rebuild is not None
            sm = self._rebuild if self._rebuild is not None else self._sm
            before = sm.revision
            restores = sm.restores_applied
            result = sm.apply(payload, index)
            changed = sm.revision != before
            restored = sm.restores_applied != restores
            if rebuilding:
                changed = restored = False  # what the node serves did not change
                if index >= self._rebuild_through:
                    self._end_rebuild()
                    swapped = True
        if restored or swapped or "staged" in result:
            _freeze_gc()
        raft = self._raft  # None while a restarting node replays inside RaftNode's constructor
        if restored and raft is not None:
            raft.compact_soon()  # the restore's entries duplicate the whole key space
        if restored or swapped:
            self.load_count += 1
        if changed:
            now = time.time()
            parts = result.get("results")  # a batch: each write has its own revision
            for one in parts if isinstance(parts, list) else (result,):
                if isinstance(one, dict) and "revision" in one:
                    self.commit_times.append((one["revision"], now))
        if changed or restored or swapped:
            self._schedule_notify(load=restored or swapped)
        return result

    def _end_rebuild(self) -> None:
        """Serve the rebuilt state machine from now on (under ``_lock``)."""
        assert self._rebuild is not None
        self._sm, self._rebuild = self._rebuild, None
        log.info(
            "the restarted Raft node caught up with the state it replaced",
            extra={"event": "rebuild_done", "fields": {"index": self._rebuild_through, "revision": self._sm.revision}},
        )

    def _snapshot(self) -> Iterator[bytes]:
        # Tick thread: a frozen copy under the lock (pointer copies); the encoding runs
        # on the snapshot thread, without the lock (see RaftNode). The state is the Raft
        # node's own, at its applied index: the one being rebuilt, if any.
        with self._lock:
            source = (self._rebuild if self._rebuild is not None else self._sm).snapshot_source()
        return source.chunks()

    def _restore(self, state: bytes, index: int) -> None:
        with self._lock:
            sm = self._rebuild if self._rebuild is not None else self._sm
            sm.restore(state, strict=False)  # our own snapshot: never refuse to start
            if sm is self._rebuild:
                if index < self._rebuild_through:
                    return  # still older than what the node serves
                self._end_rebuild()
            self.load_count += 1
        _freeze_gc()
        self._schedule_notify(load=True)

    def _schedule_notify(self, load: bool = False) -> None:
        # Runs inside the apply: it must never raise (the loop may close at shutdown).
        loop = self._loop
        if loop is None:
            return
        try:
            if load:
                loop.call_soon_threadsafe(self._fire_load)
            if not self._notify_pending:
                self._notify_pending = True
                loop.call_soon_threadsafe(self._fire_changed)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting

    def _fire_changed(self) -> None:
        self._notify_pending = False
        old, self._changed = self._changed, asyncio.Event()
        old.set()
        for listener in list(self._change_listeners):
            listener()

    def _fire_load(self) -> None:
        for listener in list(self._load_listeners):
            listener()

    def add_load_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs on the loop after every snapshot load (a load event)."""
        self._load_listeners.append(listener)

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs on the loop after revision changes: once for every run of
        changes applied before the loop got to it (so at least once after the last)."""
        self._change_listeners.append(listener)

    def changed(self) -> asyncio.Event:
        """An event set at the next revision change after this call (loop thread)."""
        return self._changed

    # ------------------------------------------------------------------ reads

    @property
    def revision(self) -> int:
        return self._sm.revision

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            return self._sm.get(key)

    def range(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> tuple[list[KeyValue], bool]:
        with self._lock:
            return self._sm.range(prefix, start_after=start_after, limit=limit)

    def events_since(self, from_revision: int, prefix: str = "") -> list[Event]:
        """Raises ``Compacted``."""
        with self._lock:
            return self._sm.events_since(from_revision, prefix)

    @property
    def compacted_revision(self) -> int:
        return self._sm.compacted_revision

    def read(self, fn: Callable[[StateMachine], T]) -> T:
        """Run ``fn`` on committed state with no commit applied meanwhile (it must not
        write, and should be quick: it holds up the Raft apply thread)."""
        with self._lock:
            return fn(self._sm)

    # ------------------------------------------------------------------ writes

    async def propose(
        self, payload: bytes, *, timeout: float | None = None, timing: str | None = "commit", batch: bool = False
    ) -> Result:
        """Commit ``payload`` and return the state machine's result.

        With ``batch``, the payload may share a log entry with the other batchable
        writes proposed in the same pass of the loop (``_submit``): one entry, one
        forward to the leader and one apply dispatch for all of them.

        Retries MISSING_LEADER / NOT_LEADER / DISCARDED / QUEUE_FULL (not applied), and
        LEADER_CHANGED / UNKNOWN_OUTCOME (maybe applied: safe only because writes carry a
        request id), until the deadline. Raises ``NoQuorum`` (its ``applied`` is False
        when nothing can still apply, "unknown" otherwise) or ``NotApplied`` (denied).
        A committed proposal is reported to ``self.timing`` under the name ``timing``.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (self.request_timeout if timeout is None else timeout)
        maybe_applied = False
        last_reason = "none"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoQuorum(
                    f"no leader with a majority answered within the deadline (last: {last_reason})",
                    last_reason,
                    applied="unknown" if maybe_applied else False,
                )
            answer = await self._raft_call(lambda done: self._submit(payload, done, batch), remaining)
            if answer is None:
                raise NoQuorum(
                    "the proposal was not committed within the deadline (no quorum?)", "timeout", applied="unknown"
                )
            result, reason = answer
            if reason == FAIL_REASON.SUCCESS:
                if timing is not None and self.timing is not None:
                    self.timing(timing, loop.time() - started)
                return dict(result) if isinstance(result, dict) else {"status": "ok"}
            last_reason = REASON_NAMES.get(reason, str(reason))
            if reason not in NOT_APPLIED_REASONS:
                maybe_applied = True
            if reason == FAIL_REASON.REQUEST_DENIED:
                raise NotApplied("the leader denied the request", last_reason)
            await asyncio.sleep(min(_RETRY_PAUSE, max(0.0, deadline - loop.time())))

    async def _raft_call(
        self, submit: Callable[[Callable[[Any, int], None]], None], timeout: float
    ) -> tuple[Any, int] | None:
        """``submit(done)`` hands a request to the Raft node, whose tick thread calls
        ``done(result, reason)`` once; returns that pair, or None when it did not come
        within ``timeout`` seconds (loop thread)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, int] | None] = loop.create_future()

        def done(result: Any, reason: int) -> None:
            self._handoff.post(loop, fut, (result, reason))

        submit(done)
        # A deadline that answers None, not ``wait_for`` (a waiter future, a callback and
        # a cancellation dance) nor a timer of its own: this is every write's path.
        self._deadlines_on(loop).add(fut, loop.time() + timeout, _answer_none)
        answer: tuple[Any, int] | None = await fut
        return answer

    def _deadlines_on(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        """The deadlines of this store's waits, on the loop they wait on: made at the first
        wait (no caller today waits from another loop than the one ``start`` got, but a
        timer armed on the wrong loop would be a silent hang, so the loop is checked)."""
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = Deadlines(loop)
        return deadlines

    def _submit(self, payload: bytes, done: Callable[[Any, int], None], batch: bool) -> None:
        """Hand ``payload`` to Raft now, or (``batch``) at the end of this pass of the
        loop together with the other batchable writes of the pass (loop thread)."""
        if not batch or len(payload) > BATCH_SOLO_BYTES:
            self.raft.propose(payload, done)
            return
        self._batch.append((payload, done))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush_batch)

    def _flush_batch(self) -> None:
        pending, self._batch = self._batch, []
        group: list[tuple[bytes, Callable[[Any, int], None]]] = []
        size = 0
        for payload, done in pending:
            if group and (len(group) >= BATCH_MAX_COMMANDS or size + len(payload) > BATCH_MAX_BYTES):
                self._propose_group(group)
                group, size = [], 0
            group.append((payload, done))
            size += len(payload)
        if group:
            self._propose_group(group)

    def _propose_group(self, group: list[tuple[bytes, Callable[[Any, int], None]]]) -> None:
        if len(group) == 1:
            self.raft.propose(*group[0])
            return
        self.entries_batched += 1
        dones = [done for _, done in group]

        def split(result: Any, reason: int) -> None:
            # Tick thread: each write gets its own result, or the entry's failure.
            results = result.get("results") if isinstance(result, dict) else None
            if reason == FAIL_REASON.SUCCESS and isinstance(results, list) and len(results) == len(dones):
                for done, one in zip(dones, results, strict=True):
                    done(one, reason)
            else:
                for done in dones:
                    done(result if reason == FAIL_REASON.SUCCESS else None, reason)

        self.raft.propose(_commands.batch([payload for payload, _ in group]), split)

    async def put(
        self,
        key: str,
        value: Any,
        *,
        prev_revision: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        payload = _commands.put(
            key, value, prev_revision=prev_revision, request_id=request_id or _commands.new_request_id()
        )
        return await self.propose(payload, timeout=timeout, batch=True)

    async def delete(
        self, key: str, *, prev_revision: int | None = None, request_id: str | None = None, timeout: float | None = None
    ) -> Result:
        payload = _commands.delete(
            key, prev_revision=prev_revision, request_id=request_id or _commands.new_request_id()
        )
        return await self.propose(payload, timeout=timeout, batch=True)

    async def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        payload = _commands.txn(compare, success, failure, request_id=request_id or _commands.new_request_id())
        return await self.propose(payload, timeout=timeout, batch=True)

    async def snapshot(self) -> tuple[bytes, int]:
        """A linearizable backup: (snapshot bytes, the revision it holds)."""
        await self.linearizable_barrier()
        # Frozen under the lock (pointer copies), encoded in a thread without it.
        source = self.read(lambda sm: sm.snapshot_source())
        data = await asyncio.to_thread(lambda: b"".join(source.chunks()))
        return data, source.revision

    async def restore(
        self,
        snapshot: bytes | RestorePlan,
        *,
        keep_prefix: str = "",
        timeout: float | None = None,
        progress: Callable[[RestoreProgress], None] | None = None,
    ) -> Result:
        """Replace the whole key space with ``snapshot`` on every node (a load event).

        The snapshot is parsed, checked and cut into log entries of at most
        ``RESTORE_ROWS_PER_ENTRY`` key-sorted rows in a worker thread; each entry is
        checked again as it applies, and the commit swaps the staged state in, so no
        apply holds the tick thread for long. ``progress`` (loop thread) gets a
        ``RestoreProgress`` after each committed entry; ``last_restore`` keeps the latest.

        Raises ``InvalidCommand`` for a malformed snapshot (nothing proposed), or the
        ``propose`` errors; a failed upload leaves the current state untouched. Keys under
        ``keep_prefix`` keep their current values. ``snapshot`` may be a ``plan_restore``
        result (the caller has parsed and checked it already).
        """
        started = time.monotonic()
        report = RestoreProgress("checking", 0, 0, 0, 0, 0.0)
        self.last_restore = report
        try:
            plan = (
                snapshot if isinstance(snapshot, RestorePlan) else await asyncio.to_thread(self.plan_restore, snapshot)
            )
            rows = plan.rows
            commands = await asyncio.to_thread(
                _commands.restore_row_commands, rows, plan.revision, _commands.new_request_id(), keep_prefix
            )
            result: Result = {}
            report = RestoreProgress("applying", len(rows), 0, len(commands), 0, time.monotonic() - started)
            # Up to RESTORE_WINDOW entries in flight: they reach the log in the order they
            # were proposed (one queue, one connection to the leader). Should a retry
            # across a leader change land out of order, that entry answers "invalid" and
            # the restore fails whole, changing nothing.
            window: deque[asyncio.Task[Result]] = deque()
            try:
                for done in range(1, len(commands) + 1):
                    while len(window) < RESTORE_WINDOW and done + len(window) <= len(commands):
                        payload = commands[done + len(window) - 1]
                        window.append(asyncio.ensure_future(self.propose(payload, timeout=timeout)))
                        await asyncio.sleep(0)  # let it reach the Raft queue now, in order
                    result = await window.popleft()
                    if result.get("status") != "ok":
                        raise InvalidCommand(str(result.get("message", "restore rejected")))
                    staged = result.get("staged", report.rows_applied)
                    report = RestoreProgress(
                        "done" if done == len(commands) else "applying",
                        len(rows),
                        len(rows) if done == len(commands) else int(staged),
                        len(commands),
                        done,
                        time.monotonic() - started,
                    )
                    self.last_restore = report
                    if progress is not None:
                        progress(report)
            finally:
                for task in window:
                    task.cancel()
            return result
        except BaseException:
            self.last_restore = dataclasses.replace(report, state="failed", seconds=time.monotonic() - started)
            raise

    def plan_restore(self, snapshot: bytes) -> RestorePlan:
        """Parse and check ``snapshot`` for ``restore`` (as ``snapshot_entries`` does:
        raises ``InvalidCommand``). CPU-heavy: any thread but the event loop's."""
        self.last_restore = RestoreProgress("checking", 0, 0, 0, 0, 0.0)
        return restore_plan(snapshot, self._sm.references)

    # ------------------------------------------------------------ linearizable reads

    async def linearizable_barrier(self, timeout: float | None = None) -> None:
        """Return once this node has applied everything committed before the call.

        Raises ``NoQuorum`` (``applied`` False: a barrier changes nothing) on timeout.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        fut: asyncio.Future[None] = loop.create_future()
        self._barrier_waiting.append(fut)
        if self._barriers_in_flight < MAX_BARRIERS_IN_FLIGHT:
            self._launch_barrier(timeout)
        # Cancelling this wait cancels ``fut`` too; the round skips futures that are done.
        # A deadline, not ``asyncio.timeout`` (a context manager, a task uncancel and a
        # timer per read): this is every read's path.
        deadline = started + (self.request_timeout if timeout is None else timeout)
        self._deadlines_on(loop).add(fut, deadline, _expire_read)
        await fut
        if self.timing is not None:
            self.timing("read_barrier", loop.time() - started)

    def _launch_barrier(self, timeout: float | None) -> None:
        # The batch is exactly the reads that arrived before this barrier was submitted.
        batch, self._barrier_waiting = self._barrier_waiting, []
        self._barriers_in_flight += 1
        self.barriers_proposed += 1
        task = asyncio.get_running_loop().create_task(self._one_barrier(batch, timeout))
        self._barrier_tasks.add(task)
        task.add_done_callback(self._barrier_tasks.discard)

    async def _one_barrier(self, batch: list[asyncio.Future[None]], timeout: float | None) -> None:
        try:
            await self._read_index(timeout)
        except (NoQuorum, NotApplied, OutcomeUnknown) as exc:
            err = NoQuorum(str(exc), exc.reason, applied=False)
            for fut in batch:
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()  # mark retrieved: a timed-out waiter is gone
        else:
            for fut in batch:
                if not fut.done():
                    fut.set_result(None)
        finally:
            self._barriers_in_flight -= 1
            if self._barrier_waiting:
                self._launch_barrier(timeout)

    async def _read_index(self, timeout: float | None) -> None:
        """Wait until this node has applied a ReadIndex point asked now, asking again
        (a new leader, no leader yet) until the deadline. Raises ``NoQuorum``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.request_timeout if timeout is None else timeout)
        last_reason = "none"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoQuorum(
                    f"no leader with a majority confirmed the read within the deadline (last: {last_reason})",
                    last_reason,
                    applied=False,
                )
            answer = await self._raft_call(self.raft.read_index, remaining)
            if answer is None:
                raise NoQuorum("no quorum confirmed the read within the deadline", "timeout", applied=False)
            _, reason = answer
            if reason == FAIL_REASON.SUCCESS:
                return
            last_reason = REASON_NAMES.get(reason, str(reason))
            await asyncio.sleep(min(_RETRY_PAUSE, max(0.0, deadline - loop.time())))

    # ------------------------------------------------------------------ status

    def status(self) -> RaftStatus:
        return self.raft.status(quorum_window=self._quorum_window)

    def leadership(self) -> Leadership:
        """``status()``'s role, leader and quorum alone: for a loop that asks on every
        commit (the blade worker). Any thread."""
        return self.raft.leadership(quorum_window=self._quorum_window)

    def read_position(self) -> ReadPosition:
        """``status()``'s applied index, commit index and quorum alone: for every
        serializable read. Any thread."""
        return self.raft.read_position(quorum_window=self._quorum_window)

    @property
    def _quorum_window(self) -> float:
        return max(1.0, self._election_timeout[1] * 1.5)

    def last_leader_contact_age(self) -> float:
        """Seconds since a majority was last known to be with this node (see
        ``RaftNode.quorum_age``)."""
        return self.raft.quorum_age()

    # ------------------------------------------------------------------ membership

    @property
    def is_learner(self) -> bool:
        """True while this node replicates the log without voting (see ``start``)."""
        return self.raft.is_learner

    @contextlib.asynccontextmanager
    async def membership_lease(self, holder: str, what: str, *, ttl: float | None = None) -> AsyncIterator[None]:
        """Hold the cluster-wide right to change the membership (loop thread).

        The lease is a key in the replicated key space, taken with a compare-and-set, so
        two changes started through different nodes cannot both hold it; it expires
        after ``ttl`` seconds (wall clock) in case its holder dies. Raises
        ``MembershipChangePending`` (with the holder and its change) when another
        change holds it, or the ``propose`` errors. The leader's own check (one
        uncommitted membership entry at most) still holds if a lease expires early.
        """
        ttl = 4 * self.request_timeout + 10.0 if ttl is None else ttl
        current = self.get(MEMBERSHIP_LEASE_KEY)
        if current is not None and lease_held(current.value, time.time()):
            raise _lease_pending(current.value)
        value = {"holder": holder, "change": what, "expires_at": time.time() + ttl}
        result = await self.put(
            MEMBERSHIP_LEASE_KEY, value, prev_revision=0 if current is None else current.mod_revision
        )
        if result.get("status") != "ok":  # another change took it first
            winner = result.get("current")
            raise _lease_pending(winner.get("value") if isinstance(winner, dict) else None)
        revision = int(result["revision"])
        try:
            yield
        finally:
            try:
                await self.delete(MEMBERSHIP_LEASE_KEY, prev_revision=revision)
            except ProposalFailed as exc:  # it expires on its own
                log.warning(
                    "membership lease not released; it expires on its own",
                    extra={"event": "membership_lease_kept", "fields": {"error": str(exc), "expires_in": ttl}},
                )

    async def change_membership(self, action: str, raft_address: str, *, timeout: float | None = None) -> None:
        """Add or remove one voting member; the leader decides (a follower's request is
        forwarded to it by PySyncObj).

        The leader refuses a change while another membership entry is uncommitted, before
        it has committed an entry of its own term, and the removal of itself (it hands
        the leadership over first); all of these pass, so they are retried until the
        deadline. Raises ``MembershipChangePending`` when the leader still refuses at
        the deadline, ``NoQuorum`` or ``OutcomeUnknown``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.request_timeout if timeout is None else timeout)
        while True:
            fut: asyncio.Future[tuple[Any, int]] = loop.create_future()

            def done(result: Any, reason: int, fut: asyncio.Future[tuple[Any, int]] = fut) -> None:
                _call_soon(loop, fut, (result, reason))

            if action == "add":
                self.raft.add_member(raft_address, done)
            else:
                self.raft.remove_member(raft_address, done)
            try:
                _, reason = await asyncio.wait_for(fut, max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise NoQuorum(
                    "membership change not committed within the deadline", "timeout", applied="unknown"
                ) from None
            if reason == FAIL_REASON.SUCCESS:
                return
            name = REASON_NAMES.get(reason, str(reason))
            if reason not in NOT_APPLIED_REASONS:
                raise OutcomeUnknown(f"membership change outcome unknown: {name}", name)
            if loop.time() + _RETRY_PAUSE >= deadline:
                if reason == FAIL_REASON.REQUEST_DENIED:
                    raise MembershipChangePending(
                        "the leader refused the change until the deadline: another membership change is not "
                        "committed yet (or the member set no longer allows this change)"
                    )
                raise NoQuorum(f"membership change not accepted before the deadline: {name}", name, applied=False)
            await asyncio.sleep(_RETRY_PAUSE)

    async def _promote_when_added(self) -> None:
        """A learner's watch: once an entry adding it is committed, restart the Raft
        node as a voter on the same data (loop thread; the restart runs in a thread)."""
        while self._raft is not None and self._raft.is_learner:
            if self._raft.promotion_ready(self._raft_address):
                await asyncio.to_thread(self._promote)
                return
            await asyncio.sleep(0.05)

    def _promote(self) -> None:
        old = self.raft
        log.info(
            "restarting Raft as a voting member",
            extra={"event": "learner_promoted", "fields": {"raft_address": self._raft_address}},
        )
        old.destroy_synchronous()
        _write_marker(os.path.join(self._data_dir, VOTER_MARKER))
        with self._lock:
            # The new node replays the journal from its snapshot into a state machine of
            # its own; the learner's (at ``applied``) is served until the replay has
            # reached it. Swapping at once served an older state: a read whose barrier
            # completed before the restart answered from it (chaos, 2026-12-07).
            self._rebuild = StateMachine(history_limit=self._history_limit, references=self._sm.references)
            self._rebuild_through = int(old.raftLastApplied)
        self._raft = self._new_raft(self._raft_address)


def _freeze_gc() -> None:
    """Move every object alive now out of the cyclic collector's reach (``gc.freeze``).

    After a bulk load (a restore's parts, a snapshot load) the process holds millions of
    long-lived entries; each full collection would scan all of them with the GIL held
    (about 0.2 s per 100k keys here), stalling the tick thread into elections. Frozen
    objects are still freed by reference counting; only cyclic garbage already alive
    now is never collected, which the store does not make. Any thread."""
    gc.freeze()


class _Handoff:
    """Raft results handed from the tick thread to the loop in batches: one
    ``call_soon_threadsafe`` (a self-pipe write and a loop wake-up) for every result
    that arrived while the loop had not yet taken the previous ones, instead of one per
    result. ``post`` runs on the tick thread and never raises; the loop resolves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Future[Any], tuple[Any, int]]] = []
        self._scheduled = False
        self.wakeups = 0  # loop wake-ups scheduled, for tests

    def post(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: tuple[Any, int]) -> None:
        with self._lock:
            self._items.append((fut, value))
            if self._scheduled:
                return
            self._scheduled = True
            self.wakeups += 1
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed (shutdown): the callers are gone
            with self._lock:
                self._items.clear()
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for fut, value in items:
            _resolve(fut, value)


def _call_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[tuple[Any, int]], value: tuple[Any, int]) -> None:
    """Hand a Raft callback's result to the loop from the tick thread; never raises."""
    try:
        loop.call_soon_threadsafe(_resolve, fut, value)
    except RuntimeError:
        pass  # the loop is closed (shutdown): the caller is gone


def _resolve(fut: asyncio.Future[T], value: T) -> None:
    if not fut.done():
        fut.set_result(value)


def _answer_none(fut: asyncio.Future[Any]) -> None:
    """A Raft call's deadline passed: it answers None (``Deadlines`` expires only futures not done)."""
    fut.set_result(None)


def _expire_read(fut: asyncio.Future[None]) -> None:
    fut.set_exception(NoQuorum("no quorum confirmed the read within the deadline", "timeout", applied=False))


@dataclasses.dataclass(frozen=True, slots=True)
class RestoreProgress:
    """Where a restore through this node stands. ``state``: checking (parsing and
    checking the upload), applying, done or failed."""

    state: str
    rows_total: int
    rows_applied: int
    entries_total: int
    entries_applied: int
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class RestorePlan:
    """A parsed, checked snapshot: its entries, as rows in key order, and its revision."""

    entries: list[KeyValue]
    rows: list[list[Any]]
    revision: int


def restore_plan(snapshot: bytes, references: Iterable[Reference] = ()) -> RestorePlan:
    """Parse and check ``snapshot`` as ``snapshot_entries`` does (raises
    ``InvalidCommand``). CPU-heavy: any thread but the event loop's."""
    probe = StateMachine(references=references)
    try:
        probe.restore(snapshot)
    except ValueError as exc:
        raise InvalidCommand(str(exc)) from None
    _freeze_gc()  # a million parsed rows must not be scanned by each full collection
    dangling = probe.dangling_reference()
    if dangling is not None:
        raise InvalidCommand(f"the snapshot breaks a reference: {dangling}")
    entries, _ = probe.range("")  # key order (sorted without one long GIL hold)
    rows = []
    for i, kv in enumerate(entries):
        rows.append([kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version])
        if i % 50_000 == 49_999:
            _freeze_gc()
    return RestorePlan(entries, rows, probe.revision)


def snapshot_entries(snapshot: bytes, references: Iterable[Reference] = ()) -> list[KeyValue]:
    """The entries of a snapshot (``GET /v1/snapshot`` bytes), checked as a restore would
    check them. Raises ``InvalidCommand`` saying what is wrong: malformed, a bad row, or
    (given ``references``) a child whose parent is missing."""
    probe = StateMachine(references=references)
    try:
        probe.restore(snapshot)
    except ValueError as exc:
        raise InvalidCommand(str(exc)) from None
    dangling = probe.dangling_reference()
    if dangling is not None:
        raise InvalidCommand(f"the snapshot breaks a reference: {dangling}")
    return list(probe.items())


def lease_held(value: Any, now: float) -> bool:
    """Whether a membership lease value still holds at wall time ``now``."""
    return isinstance(value, dict) and isinstance(value.get("expires_at"), int | float) and value["expires_at"] > now


def _lease_pending(value: Any) -> MembershipChangePending:
    held = value if isinstance(value, dict) else {}
    change, holder = held.get("change", "unknown"), held.get("holder", "?")
    return MembershipChangePending(
        f"another membership change is in progress: {change} (through {holder})",
        holder=str(held.get("holder", "")),
        change=str(held.get("change", "")),
    )


def _write_marker(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(os.path.dirname(path))
