"""The node's blade runtime: blade tables, the resync engine, the fence state, and the
worker loop that drives them.

The worker runs on the node's asyncio loop (owned by the app's cleanup context). Each
iteration:

1. brings every table up to the committed revision: a full resync for tables marked by
   a load event (start-up, snapshot install, rejoin, restore) or a failure whose backoff
   expired, incremental for the rest; a periodic audit compares everything and counts
   drift;
2. feeds each resync outcome, the lag of every table, quorum changes and the clock to
   the pure fencing policy, whose events go to the event log and the metrics.

Every resync outcome reaches ``fencing.decide`` synchronously, on the loop, before any
other request handler runs: a failed table is fenced before the next data-plane request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fencing import (
    AppChecked,
    CaughtUp,
    Fence,
    FencePolicy,
    GuardFacts,
    LagObserved,
    Outcome,
    QuorumChanged,
    Reset,
    ResyncFailed,
    ResyncOk,
    ResyncRunOk,
    Stalled,
    Tick,
    admit,
    backing_off,
    decide,
    initial_state,
)
from node._agents import DEFAULT_HEARTBEAT_TIMEOUT, AgentHub, with_agents
from node._blades import ProjectedTable, build_blades
from node._exceptions import AppMismatch, Fenced
from node._loading import DEFAULT_APP, app_identity, load_app, policy_of
from node._logging import RuntimeLog, log_event
from node._tables import TableRegistry
from node.app import App
from rdb import ReplicatedStore
from resync import ResyncEngine, TableOutcome

log = logging.getLogger("node.resync")

#: The app the cluster runs (name, version, digest), recorded by the leader: a node whose
#: app differs fences every consumer (see ``BladeRuntime._check_app``).
APP_KEY = "_rdb/app"
MEMBERS_PREFIX = "_rdb/members/"

EVENT_LOG_SIZE = 1000
HEARTBEAT_SECONDS = 0.1
STALL_SECONDS = 0.5  # a heartbeat this late reports a stall to the policy


@dataclass
class _LoopState:
    next_audit: float
    had_quorum: bool | None = None
    leader: str | None = None


class BladeRuntime:
    def __init__(
        self,
        node_id: str,
        store: ReplicatedStore,
        *,
        app: App | None = None,
        policy: FencePolicy | None = None,
        audit_interval: float = 60.0,
        action_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        agents: Mapping[str, frozenset[str]] | None = None,
        agent_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    ) -> None:
        """``clock`` (monotonic seconds) is the one clock of every fencing decision:
        the policy's state, the guard's checks and the worker's heartbeat."""
        self.node_id = node_id
        self.clock = clock
        #: Added to the clock's readings where they are shown (fences' since, events' at).
        self.clock_offset = time.time() - clock()
        self.store = store
        self.app = load_app(DEFAULT_APP) if app is None else app
        self.registry = TableRegistry(self.app)
        #: Name, version and declaration digest, shown in /v1/status and /v1/cluster.
        self.identity = app_identity(self.app)
        self.blades = build_blades(self.app, self.registry, node_id)
        self.tables: dict[str, ProjectedTable] = {t.name: t for b in self.blades.values() for t in b.values()}
        self.audit_interval = audit_interval
        # An agent is one more table to the policy (node/_agents.py).
        self.policy = with_agents(policy or policy_of(self.app, 5.0), agents or {})
        self.fence_state = initial_state(self.policy, clock())
        self.decisions: Counter[str] = Counter()
        self.event_counts: Counter[str] = Counter()
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_LOG_SIZE)
        self._event_seq = 0
        #: Logs the policy's events, and the start-up as one ``node_ready`` line.
        self.log = RuntimeLog(node_id)
        #: Called with every resync outcome, on the loop (the metrics' run durations).
        self.outcome_listeners: list[Callable[[TableOutcome], None]] = []
        self.engine = ResyncEngine(
            store,
            list(self.tables.values()),
            clock=time.time,
            action_timeout=action_timeout,
            on_outcome=self._on_resync_outcome,
            on_run=lambda _outcomes: self._observe_synced(),
        )
        #: The clean outcomes of the run in progress, fed to the policy in one step at
        #: its end (or before a failure, to keep their order).
        self._synced: list[ResyncOk] = []
        self._wake = asyncio.Event()
        self._behind_since: dict[str, float] = {}
        #: (revision, wall time every blade table reflected it): commit-to-blade figures.
        self.blade_times: deque[tuple[int, float]] = deque(maxlen=20_000)
        self.worker_delay = 0.0  # fault injection: hold the worker back
        self._catch_up: asyncio.Task[None] | None = None
        self._record_app: asyncio.Task[None] | None = None
        self.last_iteration = clock()  # the worker's heartbeat
        #: Ticked every HEARTBEAT_SECONDS by its own task: a stop of the whole process
        #: (SIGSTOP, a VM pause) shows here whenever it happened, even in mid-iteration.
        self.last_heartbeat = clock()
        #: A data-plane request waits at most this long for a suspended resync run.
        self.settle_timeout = 2 * action_timeout + 0.5
        store.add_load_listener(self.load_event)
        store.add_change_listener(self._wake.set)
        self.agents = AgentHub(self, agents or {}, heartbeat_timeout=agent_timeout)

    # ------------------------------------------------------------ fencing

    def observe(self, outcome: Outcome) -> None:
        """Feed one outcome to the pure policy; record what it decided. Loop thread."""
        now = self.clock()
        decision = decide(self.policy, self.fence_state, outcome, now)
        self.fence_state = decision.state
        for event in decision.events:
            self._event_seq += 1
            fields = event.to_dict(self.clock_offset)
            self.events.append({"seq": self._event_seq, "at": now + self.clock_offset, "node": self.node_id, **fields})
            self.event_counts[event.type] += 1
        self.log.record(
            decision.events,
            caught_up=self.fence_state.caught_up,
            fences=self.fence_state.fences,
            clock_offset=self.clock_offset,
        )

    def _on_resync_outcome(self, outcome: TableOutcome) -> None:
        self.decisions[f"{outcome.kind}:{outcome.decision}"] += 1
        for listener in self.outcome_listeners:
            listener(outcome)
        if outcome.dry_run:
            return
        if outcome.ok:
            # Held to the end of the run: a clean outcome never raises a fence (the engine
            # never moves a table back), so holding it for the rest of the run fails closed.
            self._synced.append(ResyncOk(outcome.table, outcome.revision))
        else:
            self._observe_synced()
            self.observe(ResyncFailed(outcome.table, outcome.cause or "error", outcome.error or "", outcome.revision))

    def _observe_synced(self) -> None:
        """Feed the policy the run's clean outcomes held so far, as one (loop thread)."""
        synced, self._synced = self._synced, []
        if len(synced) == 1:
            self.observe(synced[0])
        elif synced:
            self.observe(ResyncRunOk(tuple(synced)))

    async def guard(self, protocol: str, vserver: str | None = None) -> None:
        """Raise ``Fenced`` if ``protocol`` (any consumer of the policy) may not be
        served now, for ``vserver`` if given. Loop thread. Fails closed.

        The verdict is the pure policy's (``fencing.admit``); this gathers its facts at
        the moment of the request, after waiting (bounded) for a resync run that is
        half-way to finish."""
        settled = await self.engine.wait_idle(self.settle_timeout)
        fence = self.verdict(protocol, vserver, settled=settled)
        if fence is not None:
            raise Fenced(fence, self.clock_offset)

    def verdict(self, protocol: str, vserver: str | None = None, *, settled: bool) -> Fence | None:
        """The fence on ``protocol`` at this moment (``fencing.admit`` on the facts now),
        or None: what ``guard`` and the agents' fence lists decide by. Loop thread.
        ``settled``: no resync run is half-way (the caller waited for it)."""
        facts = GuardFacts(
            now=self.clock(),
            settled=settled,
            last_run=min(self.last_iteration, self.last_heartbeat),
            leader_contact_age=self.store.last_leader_contact_age(),
        )
        return admit(self.policy, self.fence_state, protocol, vserver, facts)

    def fences(self) -> list[dict[str, Any]]:
        return [f.to_dict(self.clock_offset) for f in self.fence_state.fences.values()]

    # ------------------------------------------------------------ load events and status

    def load_event(self, reason: str = "load") -> None:
        """Snapshot install, restore or rejoin: resync everything in full. Loop thread."""
        self.engine.mark_load()
        self.observe(Reset(reason))
        self._wake.set()

    def request_full_resync(self, reason: str) -> bool:
        """A load event unless one is already pending (so a flood of requests that hit a
        bad row starts one repair, not one each). Loop thread. True if it started one."""
        if any(st.needs_full for st in self.engine.status.values()):
            return False
        self.load_event(reason)
        return True

    def wake(self) -> None:
        """Run the worker's next iteration now."""
        self._wake.set()

    def applied_revision(self, tables: Iterable[str] | None = None) -> int:
        """The revision the given blade tables (default: all) on this node all reflect.
        Raises ``LookupError`` if none of ``tables`` is a blade table (a caller bug)."""
        names = set(self.engine.status) if tables is None else set(tables) & set(self.engine.status)
        if not names:
            raise LookupError(f"no blade table among {sorted(tables or ())}")
        return min(self.engine.status[n].applied_revision for n in names)

    def table_status(self) -> dict[str, Any]:
        revision = self.store.revision
        out = {}
        for name, st in self.engine.status.items():
            row = st.to_dict(revision)
            health = self.fence_state.tables.get(name)
            if health is not None and not health.ok:
                row["retry_at"] = health.retry_at + self.clock_offset
                row["consecutive_failures"] = health.failures
            out[name] = row
        return out

    # ------------------------------------------------------------ the worker

    async def run(self) -> None:
        """The worker loop; cancelled by the app's cleanup context. An iteration that
        fails is logged and retried: the loop itself never ends on an error."""
        loop_state = _LoopState(next_audit=self.clock() + self.audit_interval)
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        agents = asyncio.get_running_loop().create_task(self.agents.run())
        try:
            while True:
                self._wake.clear()  # before the work: a wake-up during it is not lost
                try:
                    await self._iteration(loop_state)
                except Exception as exc:  # noqa: BLE001 - logged; the worker loop must go on
                    log_event(log, logging.ERROR, "resync_worker_failed", exc_info=exc, error=repr(exc))
                await self._woken(timeout=0.1)
        finally:
            heartbeat.cancel()
            agents.cancel()

    async def _woken(self, timeout: float) -> None:
        """Until a revision change, ``wake()`` or ``timeout``. The worker awaits the event
        itself (no task per wait): a commit's wake-up reaches the worker in the loop's next
        pass (two tasks under ``asyncio.wait`` took four, each behind the loop's other work)."""
        timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def _heartbeat(self) -> None:
        """Tick every HEARTBEAT_SECONDS; a late tick means the process did not run for
        that long (found by a chaos run: a SIGSTOP that landed in the middle of a worker
        iteration was not seen by the iteration's own gap check, and the woken node
        answered from tables older than the staleness bound). Loop thread."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            gap = self.clock() - self.last_heartbeat
            if gap > STALL_SECONDS:
                self.observe(Stalled(gap))  # the policy decides whether it was long enough to matter
                self._wake.set()
            self.last_heartbeat = self.clock()

    async def _iteration(self, s: _LoopState) -> None:
        gap = self.clock() - self.last_iteration
        if gap > STALL_SECONDS:
            self.observe(Stalled(gap))  # the policy decides whether it was long enough to matter
        self.last_iteration = self.clock()
        if self.worker_delay:
            await asyncio.sleep(self.worker_delay)
        status = self.store.leadership()
        if status.quorum != s.had_quorum and not (s.had_quorum is None and status.quorum):
            self.observe(QuorumChanged(status.quorum))
            if status.quorum and s.had_quorum is not None:
                self.load_event("rejoin")  # trust nothing incremental after a partition
            s.had_quorum = status.quorum
        if not self.fence_state.caught_up and status.quorum and self._catch_up is None:
            self._catch_up = asyncio.get_running_loop().create_task(self._confirm_caught_up())
        if status.leader != s.leader and status.leader is not None:
            if s.leader is not None:
                self.observe(Reset("leader_change"))
            s.leader = status.leader
        self._check_app(status.role == "leader")
        await self.engine.run_pending(skip=backing_off(self.fence_state, self.clock()))
        if self.clock() >= s.next_audit:
            s.next_audit = self.clock() + self.audit_interval
            await self.engine.resync(None, "audit")
        self._record_blade_time()
        self._observe_lag()
        self.agents.check()
        self.observe(Tick())
        self.agents.wake()
        self.last_iteration = self.clock()

    def app_problem(self) -> str | None:
        """Why this node's app is not the one the cluster records, or None. Loop thread."""
        record = self.store.get(APP_KEY)
        if record is None:
            return "waiting for the leader to record the cluster's app"
        if record.value != self.identity:
            theirs = record.value if isinstance(record.value, dict) else {}
            return (
                f"this node runs app {_describe(self.identity)} but the cluster runs {_describe(theirs)}; "
                "it serves nothing until every member runs one app"
            )
        return None

    def check_table_write(self) -> None:
        """Raise ``AppMismatch`` if this node's app is not the cluster's recorded one: its
        schemas and keys are not the cluster's, so it must not write management rows."""
        record = self.store.get(APP_KEY)
        if record is not None and record.value != self.identity:
            problem = self.app_problem()
            raise AppMismatch(problem or "this node's app is not the cluster's")

    def _check_app(self, leader: bool) -> None:
        """Feed the app comparison to the policy; as leader, record the cluster's app:
        this node's if none is recorded, or once every member has registered this
        node's app (the last step of a rolling upgrade). A single node that joins with
        another app never changes the record: it fences itself instead."""
        problem = self.app_problem()
        if problem != self.fence_state.app_problem:  # only news reaches the policy
            self.observe(AppChecked(problem))
        if not leader or self._record_app is not None:
            return
        record = self.store.get(APP_KEY)
        if record is not None and record.value == self.identity:
            return
        if record is not None:
            members = self.store.status().members
            registered = {
                kv.value.get("raft_address"): kv.value.get("app")
                for kv in self.store.range(MEMBERS_PREFIX)[0]
                if isinstance(kv.value, dict)
            }
            if any(registered.get(m) != self.identity for m in members):
                return
        prev = 0 if record is None else record.mod_revision
        self._record_app = asyncio.get_running_loop().create_task(self._write_app_record(prev))

    async def _write_app_record(self, prev_revision: int) -> None:
        try:
            await self.store.put(APP_KEY, dict(self.identity), prev_revision=prev_revision)
            # The first record is part of a new cluster's start-up (its line is node_ready);
            # a changed one (a rolling upgrade completed) is news.
            level = logging.INFO if prev_revision else logging.DEBUG
            log_event(log, level, "cluster_app_recorded", app=_describe(self.identity))
            self._wake.set()
        except Exception as exc:  # noqa: BLE001 - no quorum, lost the race: the next iteration retries
            log.debug("recording the cluster's app failed: %s", exc)
        finally:
            self._record_app = None

    async def _confirm_caught_up(self) -> None:
        """A read barrier through the log: once it returns, this node has applied
        everything committed before it, whatever it replayed from disk."""
        try:
            await self.store.linearizable_barrier(timeout=2.0)
            self.observe(CaughtUp(self.store.revision))
            self._wake.set()
        except Exception as exc:  # noqa: BLE001 - no quorum yet: the next iteration retries
            log.debug("catch-up barrier failed: %s", exc)
        finally:
            self._catch_up = None

    def _record_blade_time(self) -> None:
        applied = self.applied_revision()
        if not self.blade_times or applied > self.blade_times[-1][0]:
            self.blade_times.append((applied, time.time()))

    def _observe_lag(self) -> None:
        now = self.clock()
        revision = self.store.revision
        for name, st in self.engine.status.items():
            if st.applied_revision >= revision:
                self._behind_since.pop(name, None)
                continue
            since = self._behind_since.setdefault(name, now)
            self.observe(LagObserved(name, revision - st.applied_revision, now - since, revision))


def _describe(identity: Any) -> str:
    if not isinstance(identity, dict):
        return "an unknown app"
    return f"{identity.get('name')} {identity.get('version')} (declarations {identity.get('digest')})"
