"""The fencing policy: pure, declarative, deterministic.

``decide(policy, state, outcome, now) -> Decision`` is the whole behaviour: it takes
the current ``FenceState``, one observed outcome (a resync result, a lag reading, a
quorum change, a reset, or a clock tick) and the time, and returns the new state plus
the events it produced (resync failures, fences raised and lifted). No I/O, no clock.

``guard(state, protocol, vserver)`` is the one check every data-plane handler makes;
it fails closed: a table that was never synced counts as failed.

``admit(policy, state, consumer, scope, facts)`` is the guard at request time: it adds
what the runtime observes at that moment (``GuardFacts``) to the state's fences.

The consumers and the tables they depend on are the app's (``node.app.Consumer``);
this package knows no table names.

A *consumer* is a protocol or a client application. Its dependencies are either
node-wide (a failed table fences the consumer for every vserver) or scoped to a set of
vservers (a failed table fences it for those vservers only). ``policy_from_document``
builds a policy from a parsed JSON/TOML document and raises ``PolicyError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

DEFAULT_QUORUM_GRACE = 5.0
#: The smallest grace period a consumer may have: below it, a consumer would fence
#: between two ordinary iterations of the resync worker.
MIN_QUORUM_GRACE = 0.5


@dataclass(frozen=True)
class ScopedDependency:
    """``tables`` matter to a consumer only when it serves one of ``vservers``."""

    vservers: frozenset[str]
    tables: frozenset[str]


@dataclass(frozen=True)
class FencePolicy:
    """Which consumers (protocols and client applications) depend on which tables, and
    when to fence, retry and unfence. The defaults fence on the first failure; a larger
    ``failures_to_fence`` or a ``fence_after_seconds`` lets consumers keep serving through
    early failures, which relaxes "never serve from config that failed to sync" by choice."""

    #: consumer -> tables whose failure fences it on this node for every vserver.
    dependencies: Mapping[str, frozenset[str]]
    #: consumer -> tables whose failure fences it only for some vservers.
    scoped: Mapping[str, tuple[ScopedDependency, ...]] = field(default_factory=dict)
    #: Consumers that are client applications rather than protocols (shown as their kind).
    applications: frozenset[str] = frozenset()
    #: Fence once a table has failed this many times in a row...
    failures_to_fence: int = 1
    #: ...or has been failing for this long (seconds), whichever comes first (0: off).
    fence_after_seconds: float = 0.0
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    #: A table further behind than this (revisions or seconds) counts as failed.
    max_lag_revisions: int = 10_000
    max_lag_seconds: float = 5.0
    #: Per consumer: how long a node without quorum keeps serving last-known config. The
    #: smallest one also decides when a node must catch up again after a stall.
    quorum_grace: Mapping[str, float] = field(default_factory=dict)

    def consumers(self) -> list[str]:
        """Every protocol and application the policy knows, sorted."""
        return sorted(set(self.dependencies) | set(self.scoped))

    def tables(self) -> frozenset[str]:
        """Every table some consumer depends on, node-wide or scoped."""
        scoped = (t for rules in self.scoped.values() for rule in rules for t in rule.tables)
        return frozenset(t for deps in self.dependencies.values() for t in deps) | frozenset(scoped)

    def kind(self, consumer: str) -> str:
        """``application`` or ``protocol``."""
        return "application" if consumer in self.applications else "protocol"

    def grace(self, consumer: str) -> float:
        """The consumer's quorum grace period (``DEFAULT_QUORUM_GRACE`` if it has none)."""
        return self.quorum_grace.get(consumer, DEFAULT_QUORUM_GRACE)

    def backoff(self, failures: int) -> float:
        """Delay before retry number ``failures`` (>= 1): capped exponential."""
        return min(self.backoff_max, self.backoff_initial * self.backoff_factor ** max(0, failures - 1))


# ------------------------------------------------------------------ outcomes (inputs)


@dataclass(frozen=True)
class ResyncOk:
    table: str
    revision: int


@dataclass(frozen=True)
class ResyncRunOk:
    """Several tables resynced cleanly: each of ``oks`` in order, as one outcome. The
    blade worker's run covers every table on every commit; one step for all of them
    costs one new state, not one per table."""

    oks: tuple[ResyncOk, ...]


@dataclass(frozen=True)
class ResyncFailed:
    table: str
    cause: str  # error | timeout | verification | lag
    message: str
    revision: int


@dataclass(frozen=True)
class LagObserved:
    table: str
    revisions: int
    seconds: float
    revision: int


@dataclass(frozen=True)
class QuorumChanged:
    has_quorum: bool


@dataclass(frozen=True)
class CaughtUp:
    """This node has applied everything the leader had committed; ``revision`` is the
    store revision at that moment, which every table must reach before serving."""

    revision: int


@dataclass(frozen=True)
class Stalled:
    """The node did not run for ``seconds`` (stopped, starved): whatever it knew may be
    old. Past the grace period it must catch up again before serving."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """A leader change or a load event: retry failed tables at once."""

    reason: str


@dataclass(frozen=True)
class Tick:
    """Time passed (quorum grace periods expire on ticks)."""


@dataclass(frozen=True)
class AppChecked:
    """The outcome of comparing this node's app with the one the cluster records:
    ``problem`` None when they are the same, else why not (this node then fences every
    consumer: it must never project tables the rest of the cluster does not)."""

    problem: str | None


Outcome = (
    ResyncOk | ResyncRunOk | ResyncFailed | LagObserved | QuorumChanged | CaughtUp | Stalled | Reset | Tick | AppChecked
)


# ------------------------------------------------------------------ state


@dataclass(frozen=True)
class TableHealth:
    ok: bool = False
    failures: int = 0
    failing_since: float | None = None
    cause: str | None = "not_synced"
    message: str | None = "not resynced yet"
    revision: int = 0
    retry_at: float = 0.0
    synced_revision: int = 0  # the last revision a resync of this table succeeded at


@dataclass(frozen=True)
class Fence:
    """A consumer (``protocol`` names it, protocol or application) that may not serve on
    this node, for ``vservers`` (None: all), because of ``table`` (``*``: node-wide)."""

    protocol: str
    table: str
    cause: str
    message: str
    since: float
    revision: int
    vservers: frozenset[str] | None = None  # None: every vserver
    kind: str = "protocol"  # or "application"

    def covers(self, vserver: str | None) -> bool:
        """Does this fence stop serving ``vserver``? (None: a node-wide request.)"""
        return self.vservers is None or vserver is None or vserver in self.vservers

    def to_dict(self, clock_offset: float = 0.0) -> dict[str, Any]:
        """The wire form; ``clock_offset`` turns the policy clock's ``since`` into wall time."""
        return {
            "protocol": self.protocol,
            "kind": self.kind,
            "vservers": None if self.vservers is None else sorted(self.vservers),
            "table": self.table,
            "cause": self.cause,
            "message": self.message,
            "since": self.since + clock_offset,
            "revision": self.revision,
        }


# ------------------------------------------------------------------ events (outputs)


@dataclass(frozen=True)
class FenceEvent:
    """Something the policy decided that an operator should see (the node's event log)."""

    type: ClassVar[str] = ""

    def to_dict(self, clock_offset: float = 0.0) -> dict[str, Any]:
        """The wire form: ``type`` and the fields (fences in their wire form)."""
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict(clock_offset) if isinstance(value, Fence) else value
        return out


@dataclass(frozen=True)
class TableFailed(FenceEvent):
    type: ClassVar[str] = "resync_failed"
    table: str
    cause: str
    message: str
    revision: int
    failures: int


@dataclass(frozen=True)
class FenceRaised(FenceEvent):
    type: ClassVar[str] = "fenced"
    protocol: str
    fence: Fence


@dataclass(frozen=True)
class FenceChanged(FenceEvent):
    type: ClassVar[str] = "fence_changed"
    protocol: str
    fence: Fence


@dataclass(frozen=True)
class FenceLifted(FenceEvent):
    type: ClassVar[str] = "unfenced"
    protocol: str
    was: Fence


@dataclass(frozen=True)
class QuorumLost(FenceEvent):
    type: ClassVar[str] = "quorum_lost"


@dataclass(frozen=True)
class QuorumRegained(FenceEvent):
    type: ClassVar[str] = "quorum_regained"


@dataclass(frozen=True)
class NodeStalled(FenceEvent):
    type: ClassVar[str] = "stalled"
    seconds: float


@dataclass(frozen=True)
class NodeCaughtUp(FenceEvent):
    type: ClassVar[str] = "caught_up"
    revision: int


@dataclass(frozen=True)
class AppMismatched(FenceEvent):
    type: ClassVar[str] = "app_mismatch"
    message: str


@dataclass(frozen=True)
class AppMatched(FenceEvent):
    type: ClassVar[str] = "app_matched"


@dataclass(frozen=True)
class FenceState:
    tables: Mapping[str, TableHealth]
    fences: Mapping[str, Fence]  # protocol -> fence
    quorum_lost_since: float | None = None
    #: False at start-up and after a rejoin that followed a fenced quorum loss, until this
    #: node has applied what the leader had committed (a restarted node must not serve
    #: the old config it replays from disk).
    caught_up: bool = False
    #: Every table must have resynced to at least this revision before serving.
    required_revision: int = 0
    #: The policy's consumers: the guard fences anything else (fail closed).
    consumers: frozenset[str] = frozenset()
    #: Why this node's app is not the cluster's, or None (see ``AppChecked``).
    app_problem: str | None = None


def initial_state(policy: FencePolicy, now: float) -> FenceState:
    """Every table unsynced, so every protocol starts fenced (fail closed)."""
    tables = {t: TableHealth(failing_since=now) for t in sorted(policy.tables())}
    state = FenceState(tables=tables, fences={}, consumers=frozenset(policy.consumers()))
    return _refence(policy, state, now, [])[0]


@dataclass(frozen=True)
class Decision:
    state: FenceState
    events: list[FenceEvent]

    @property
    def summary(self) -> str:
        """A short string for logs and tests, e.g. 'resync_failed:vldb,fenced:cifs,fenced:nfs' or 'steady'."""
        kinds = [
            f"{e.type}:{subject}" if (subject := getattr(e, "protocol", None) or getattr(e, "table", None)) else e.type
            for e in self.events
        ]
        return ",".join(kinds) if kinds else "steady"


def decide(policy: FencePolicy, state: FenceState, outcome: Outcome, now: float) -> Decision:
    """The new fence state after ``outcome`` at time ``now``. Pure."""
    if isinstance(outcome, ResyncRunOk):
        return _decide_run(policy, state, outcome.oks, now)
    if _time_free(state):
        # The common case, several times per commit: every table healthy, quorum held.
        # The fences are then a function of the state alone, and these outcomes leave
        # them as they are: they are not recomputed.
        if isinstance(outcome, Tick) or (
            isinstance(outcome, ResyncOk | ResyncFailed | LagObserved) and outcome.table not in state.tables
        ):
            return Decision(state, [])  # a table no consumer depends on
        if isinstance(outcome, ResyncOk) and _stays_current(state, outcome):
            tables = dict(state.tables)
            tables[outcome.table] = _synced(outcome)
            return Decision(replace(state, tables=tables), [])
    return _decide_in_full(policy, state, outcome, now)


def _decide_run(policy: FencePolicy, state: FenceState, oks: tuple[ResyncOk, ...], now: float) -> Decision:
    """``decide`` of each of ``oks`` in turn. While every fence is time-free and every
    table of the run stays current (the shortcut's conditions, for each), that is one
    new map of table health, and no fence changes."""
    if _time_free(state) and all(ok.table not in state.tables or _stays_current(state, ok) for ok in oks):
        # A table named twice ends at its last revision, which stays current too.
        watched = [ok for ok in oks if ok.table in state.tables]
        if not watched:
            return Decision(state, [])
        tables = dict(state.tables)
        for ok in watched:
            tables[ok.table] = _synced(ok)
        return Decision(replace(state, tables=tables), [])
    return _in_turn(decide, policy, state, oks, now)


def _in_turn(
    decide_one: Callable[[FencePolicy, FenceState, Outcome, float], Decision],
    policy: FencePolicy,
    state: FenceState,
    oks: tuple[ResyncOk, ...],
    now: float,
) -> Decision:
    """``decide_one`` of each of ``oks``, each on the state the one before left."""
    events: list[FenceEvent] = []
    for ok in oks:
        decision = decide_one(policy, state, ok, now)
        state = decision.state
        events.extend(decision.events)
    return Decision(state, events)


def _synced(ok: ResyncOk) -> TableHealth:
    return TableHealth(ok=True, cause=None, message=None, revision=ok.revision, synced_revision=ok.revision)


def _time_free(state: FenceState) -> bool:
    """Is no fence a matter of time? A failing table's fence may wait for
    ``fence_after_seconds``, and a quorum loss for the grace period; nothing else
    depends on ``now`` (a fence's ``since`` is kept while its reason stays)."""
    return state.quorum_lost_since is None and all(health.ok for health in state.tables.values())


def _stays_current(state: FenceState, outcome: ResyncOk) -> bool:
    """Was the table synced at or past the required revision, and does it stay there?
    Then it causes no fence before or after ``outcome``."""
    old = state.tables.get(outcome.table)
    return old is not None and outcome.revision >= old.synced_revision >= state.required_revision


def _decide_in_full(policy: FencePolicy, state: FenceState, outcome: Outcome, now: float) -> Decision:
    """``decide`` without its shortcuts: every fence recomputed (tests compare the two)."""
    if isinstance(outcome, ResyncRunOk):
        return _in_turn(_decide_in_full, policy, state, outcome.oks, now)
    events: list[FenceEvent] = []
    tables = dict(state.tables)
    quorum_lost_since = state.quorum_lost_since
    caught_up, required = state.caught_up, state.required_revision
    app_problem = state.app_problem

    if isinstance(outcome, ResyncOk) and outcome.table in tables:
        tables[outcome.table] = _synced(outcome)
    elif isinstance(outcome, Stalled):
        if outcome.seconds >= min(policy.quorum_grace.values(), default=0.0):
            if caught_up:
                events.append(NodeStalled(round(outcome.seconds, 3)))
            caught_up = False
    elif isinstance(outcome, CaughtUp):
        if not caught_up:
            events.append(NodeCaughtUp(outcome.revision))
        caught_up, required = True, max(required, outcome.revision)
    elif isinstance(outcome, ResyncFailed | LagObserved) and outcome.table in tables:
        if isinstance(outcome, LagObserved):
            if not tables[outcome.table].ok:
                return Decision(state, [])  # already failing: the lag is a symptom, not news
            over = outcome.revisions > policy.max_lag_revisions or outcome.seconds > policy.max_lag_seconds
            if not over:
                return Decision(state, [])
            cause = "lag"
            message = f"{outcome.revisions} revision(s), {outcome.seconds:.1f}s behind the committed state"
        else:
            cause, message = outcome.cause, outcome.message
        old = tables[outcome.table]
        failures = old.failures + 1
        tables[outcome.table] = TableHealth(
            ok=False,
            failures=failures,
            failing_since=old.failing_since if not old.ok and old.failing_since is not None else now,
            cause=cause,
            message=message,
            revision=outcome.revision,
            retry_at=now + policy.backoff(failures),
            synced_revision=old.synced_revision,
        )
        events.append(TableFailed(outcome.table, cause, message, outcome.revision, failures))
    elif isinstance(outcome, QuorumChanged):
        if not outcome.has_quorum and quorum_lost_since is None:
            quorum_lost_since = now
            events.append(QuorumLost())
        elif outcome.has_quorum and quorum_lost_since is not None:
            # Within the grace period the node kept serving last-known config; past it,
            # it may have missed anything: it must catch up again before serving.
            if now - quorum_lost_since >= min(policy.quorum_grace.values(), default=0.0):
                caught_up = False
            quorum_lost_since = None
            events.append(QuorumRegained())
    elif isinstance(outcome, Reset):
        tables = {name: h if h.ok else replace(h, retry_at=now) for name, h in tables.items()}
    elif isinstance(outcome, AppChecked) and outcome.problem != app_problem:
        if outcome.problem is None:
            events.append(AppMatched())
        else:
            events.append(AppMismatched(outcome.problem))
        app_problem = outcome.problem

    new_state = FenceState(
        tables, state.fences, quorum_lost_since, caught_up, required, state.consumers, app_problem=app_problem
    )
    return Decision(*_refence(policy, new_state, now, events))


def _refence(
    policy: FencePolicy, state: FenceState, now: float, events: list[FenceEvent]
) -> tuple[FenceState, list[FenceEvent]]:
    """Recompute every protocol's fence from table health and quorum."""
    fences: dict[str, Fence] = {}
    for protocol in policy.consumers():
        fence = _fence_for(policy, state, protocol, now)
        old = state.fences.get(protocol)
        if fence is None:
            if old is not None:
                events.append(FenceLifted(protocol, old))
            continue
        fence = replace(fence, kind=policy.kind(protocol))
        if old is not None and (old.table, old.cause, old.vservers) == (fence.table, fence.cause, fence.vservers):
            fence = replace(fence, since=old.since)  # same reason: keep its original 'since'
        elif old is None:
            events.append(FenceRaised(protocol, fence))
        else:
            events.append(FenceChanged(protocol, fence))
        fences[protocol] = fence
    return replace(state, fences=fences), events


def _table_fence(policy: FencePolicy, state: FenceState, protocol: str, table: str, now: float) -> Fence | None:
    """The fence ``table`` puts on ``protocol``: its failure past the thresholds, else
    (cause ``catching_up``) its last sync being older than the required revision."""
    health = state.tables.get(table)
    if health is None:
        return None
    if not health.ok:
        long_enough = (
            policy.fence_after_seconds > 0
            and health.failing_since is not None
            and now - health.failing_since >= policy.fence_after_seconds
        )
        if health.cause == "not_synced" or health.failures >= policy.failures_to_fence or long_enough:
            return Fence(
                protocol,
                table,
                health.cause or "failed",
                health.message or "resync failed",
                health.failing_since if health.failing_since is not None else now,
                health.revision,
            )
    if health.synced_revision < state.required_revision:
        return Fence(
            protocol,
            table,
            "catching_up",
            f"{table} is at revision {health.synced_revision}; serving resumes at {state.required_revision}",
            now,
            health.synced_revision,
        )
    return None


def _fence_for(policy: FencePolicy, state: FenceState, protocol: str, now: float) -> Fence | None:
    for table in sorted(policy.dependencies.get(protocol, ())):
        fence = _table_fence(policy, state, protocol, table, now)
        if fence is not None and fence.cause != "catching_up":
            return fence
    grace = policy.grace(protocol)
    if state.quorum_lost_since is not None and now - state.quorum_lost_since >= grace:
        return Fence(
            protocol,
            "*",
            "no_quorum",
            f"no quorum for {now - state.quorum_lost_since:.1f}s (grace {grace:g}s)",
            state.quorum_lost_since,
            0,
        )
    if not state.caught_up:
        # Never caught up (a restart replays old config from disk): no grace for that.
        return Fence(protocol, "*", "catching_up", "not yet caught up with the leader's commit index", now, 0)
    if state.app_problem is not None:
        # A node running another app (or version) must never serve what it projects.
        return Fence(protocol, "*", "app_mismatch", state.app_problem, now, 0)
    if state.quorum_lost_since is not None:
        # Within the grace period: keep serving last-known config, except where a
        # vserver-scoped dependency has failed.
        return _scoped_fence(policy, state, protocol, now, catching_up=False)
    for table in sorted(policy.dependencies.get(protocol, ())):
        fence = _table_fence(policy, state, protocol, table, now)
        if fence is not None:
            return fence
    return _scoped_fence(policy, state, protocol, now, catching_up=True)


def _scoped_fence(
    policy: FencePolicy, state: FenceState, protocol: str, now: float, *, catching_up: bool
) -> Fence | None:
    """One fence for every vserver whose scoped dependencies failed (or, with
    ``catching_up``, have not reached the required revision); the first such table in
    name order gives its table, cause and message."""
    first: Fence | None = None
    vservers: set[str] = set()
    for rule in policy.scoped.get(protocol, ()):
        for table in sorted(rule.tables):
            fence = _table_fence(policy, state, protocol, table, now)
            if fence is not None and (catching_up or fence.cause != "catching_up"):
                vservers |= rule.vservers
                if first is None or fence.table < first.table:
                    first = fence
    return None if first is None else replace(first, vservers=frozenset(vservers))


def guard(state: FenceState, protocol: str, vserver: str | None = None) -> Fence | None:
    """The fence that stops serving ``protocol`` for ``vserver`` now, or None (a request
    for no particular vserver is stopped by any fence). Fails closed: a consumer the
    policy does not know is fenced."""
    fence = state.fences.get(protocol)
    if fence is not None and fence.covers(vserver):
        return fence
    if protocol not in state.consumers and protocol not in state.fences:
        message = f"the fencing policy has no consumer {protocol!r}"
        return Fence(protocol, "*", "unknown_consumer", message, 0.0, 0, kind="unknown")
    return None


def due_for_retry(state: FenceState, now: float) -> frozenset[str]:
    """Failed tables whose backoff has expired."""
    return frozenset(t for t, h in state.tables.items() if not h.ok and h.cause != "not_synced" and h.retry_at <= now)


def backing_off(state: FenceState, now: float) -> frozenset[str]:
    """Failed tables still inside their backoff window."""
    return frozenset(t for t, h in state.tables.items() if not h.ok and h.cause != "not_synced" and h.retry_at > now)


# ------------------------------------------------------------------ the guard at request time


@dataclass(frozen=True)
class GuardFacts:
    """What the runtime observes at the moment of a request, on the policy's clock."""

    now: float
    #: No resync run is half-way (a run that suspends leaves tables at mixed revisions).
    settled: bool
    #: When the node last ran: the older of the resync worker's last iteration and its
    #: heartbeat (a process stop shows here whenever it happened).
    last_run: float
    #: Seconds since this node last heard from a leader.
    leader_contact_age: float


def admit(policy: FencePolicy, state: FenceState, consumer: str, scope: str | None, facts: GuardFacts) -> Fence | None:
    """The fence that stops ``consumer`` serving ``scope`` (a vserver, None: node-wide)
    at the moment ``facts`` describe, or None. Pure; fails closed. Besides the state's
    fences (``guard``) it checks, against the clock now, what the worker may not have
    noticed yet: a resync run half-way, a node that has not run for longer than the
    consumer's grace (stopped, starved), a leader not heard from for longer than it."""
    kind = policy.kind(consumer)
    if not facts.settled:
        return Fence(consumer, "*", "resync_in_progress", "a resync is still applying changes", facts.now, 0, kind=kind)
    grace = policy.grace(consumer)
    stalled = facts.now - facts.last_run
    if stalled > grace:
        message = f"the resync worker has not run for {stalled:.1f}s"
        return Fence(consumer, "*", "resync_stalled", message, facts.last_run, 0, kind=kind)
    age = facts.leader_contact_age
    if age > grace:
        message = f"no quorum for {age:.1f}s (grace {grace:g}s)"
        return Fence(consumer, "*", "no_quorum", message, facts.now - age, 0, kind=kind)
    return guard(state, consumer, scope)


def corrupt_table(policy: FencePolicy, consumer: str, problem: str, now: float) -> Fence:
    """The fence for a request whose answer found a blade row it cannot read (memory
    corruption, a bug): refuse it, as the caller starts a full resync to repair it."""
    message = f"a blade row cannot be read ({problem}); a full resync was started"
    return Fence(consumer, "*", "corrupt_table", message, now, 0, kind=policy.kind(consumer))
