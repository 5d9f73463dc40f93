"""The generic resync engine: keeps every registered blade table equal to its projection
of committed state, whatever the table.

A table registers a ``TableAdapter``: its projection (``desired_all``, ``affected``,
``desired``; pure functions of committed state), the key prefixes it reads
(``watches``), and its blade rows (``rows``, ``apply``). The engine reads committed
state through a ``ConsistentReader`` (one revision per read, never the writer), plans
with the pure ``plan``, and executes with ``adapter.apply``. A new table needs no
change here.

Runs: ``load`` (full, after start-up replay, snapshot install, rejoin, restore),
``incremental`` (after commits; cost proportional to the change), ``audit`` (full
comparison; differences not explained by new commits count as drift), and ``manual``
(with a dry run that only returns the plan).

Threading: every method runs on the node's asyncio loop; one resync runs at a time.
Time comes from the ``clock`` passed in. Outcomes are values (``TableOutcome``);
adapter failures are caught and recorded, never raised.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from rdb import Compacted, Event, KeyValue
from resync._planner import Action, Row, plan

RunKind = Literal["load", "incremental", "audit", "manual"]
T = TypeVar("T")


class Reader(Protocol):
    """Read-only committed state at one revision (``rdb.StateMachine`` satisfies it)."""

    @property
    def revision(self) -> int: ...

    def get(self, key: str) -> KeyValue | None: ...

    def range(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> tuple[list[KeyValue], bool]: ...

    def children(self, parent_key: str) -> frozenset[str]: ...

    def events_since(self, from_revision: int, prefix: str = "") -> list[Event]: ...

    def frozen(self) -> Reader:
        """A read-only copy of this state that later commits do not change."""
        ...


class ConsistentReader(Protocol):
    """Runs a function against committed state with no commit applied in between."""

    def read(self, fn: Callable[[Reader], T]) -> T: ...


class TableAdapter(Protocol):
    """One blade table: its projection of committed state, and its rows."""

    name: str
    blade: str
    #: Key prefixes whose events can change this table's projection ("" for every
    #: key), fixed for the adapter's life. The engine hands ``affected`` only the
    #: events under them, and does not call it when none of a run's events is.
    watches: tuple[str, ...]

    def desired_all(self, reader: Reader) -> dict[str, Row]:
        """The whole projection for this node (pure)."""
        ...

    def affected(self, reader: Reader, events: Sequence[Event]) -> set[str]:
        """Keys of this table whose projection ``events`` (all under ``watches``) may
        have changed (pure)."""
        ...

    def desired(self, reader: Reader, key: str) -> Row | None:
        """The projected row for ``key``, or None if it is not in the projection (pure)."""
        ...

    def rows(self) -> Mapping[str, Row]:
        """The blade table's current rows."""
        ...

    async def apply(self, actions: Sequence[Action]) -> None:
        """Carry out the actions on the blade table. May raise; the engine records it."""
        ...


@dataclass
class TableStatus:
    """What /v1/status shows for one blade table."""

    name: str
    blade: str
    state: str = "never_synced"  # never_synced | in_sync | syncing | failed
    applied_revision: int = 0
    adds: int = 0
    removes: int = 0
    modifies: int = 0
    drift_count: int = 0
    last_full_resync: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    last_run: dict[str, Any] | None = None
    needs_full: bool = True
    failures: int = 0

    def to_dict(self, store_revision: int) -> dict[str, Any]:
        return {
            "blade": self.blade,
            "state": self.state,
            "applied_revision": self.applied_revision,
            "lag": max(0, store_revision - self.applied_revision),
            "adds": self.adds,
            "removes": self.removes,
            "modifies": self.modifies,
            "drift_count": self.drift_count,
            "last_full_resync": self.last_full_resync,
            "last_error": self.last_error,
            "last_run": self.last_run,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class TableOutcome:
    """The decision of one resync run for one table: logged, counted, asserted in tests."""

    table: str
    kind: RunKind
    ok: bool
    revision: int
    actions: list[Action] = field(default_factory=list)
    drift: int = 0
    error: str | None = None
    cause: str | None = None  # error | timeout | verification
    dry_run: bool = False
    duration_s: float = 0.0

    @property
    def decision(self) -> str:
        if self.dry_run:
            return "planned"
        if not self.ok:
            return f"failed:{self.cause}"
        return "converged" if self.actions else "in_sync"

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "kind": self.kind,
            "decision": self.decision,
            "ok": self.ok,
            "revision": self.revision,
            "actions": len(self.actions),
            "plan": [a.to_dict() for a in self.actions] if self.dry_run else None,
            "drift": self.drift,
            "error": self.error,
            "cause": self.cause,
            "dry_run": self.dry_run,
            "duration_ms": round(self.duration_s * 1000, 3),
        }


class UnknownTable(KeyError):
    """No blade table is registered under that name."""


@dataclass(frozen=True)
class _Work:
    """What one consistent read produced for one table."""

    revision: int
    keys: set[str] | None  # None: the whole table
    desired: dict[str, Row]
    explained: set[str] = field(default_factory=set)  # keys changed by commits since applied
    error: str | None = None  # the projection itself failed (say, a row it cannot read)
    view: Reader | None = None  # a frozen copy to project from, for full resyncs; "*": unknown


class ResyncEngine:
    """Keeps the registered tables equal to their projections. Loop-thread only."""

    def __init__(
        self,
        store: ConsistentReader,
        adapters: Sequence[TableAdapter],
        *,
        clock: Callable[[], float],
        action_timeout: float = 2.0,
        on_outcome: Callable[[TableOutcome], None] | None = None,
        on_run: Callable[[list[TableOutcome]], None] | None = None,
    ) -> None:
        """``on_outcome(outcome)`` is called as each table's run ends; ``on_run(outcomes)``
        once a run of every table it covers has ended, before the next run can start."""
        self._store = store
        self._adapters = {a.name: a for a in adapters}
        self._watched = tuple(sorted({prefix for a in adapters for prefix in a.watches}))
        self._clock = clock
        self.action_timeout = action_timeout
        self._on_outcome = on_outcome
        self._on_run = on_run
        self._lock = asyncio.Lock()
        self.status = {a.name: TableStatus(a.name, a.blade) for a in adapters}

    @property
    def tables(self) -> list[str]:
        return list(self._adapters)

    def adapter(self, name: str) -> TableAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise UnknownTable(name) from None

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no resync run is in progress (True), or ``timeout`` passes (False).

        A run only yields to other tasks while an adapter suspends, so a caller that
        reads blade tables right after this returns (without awaiting in between) sees
        every table of the last run at the same revision."""
        if not self._lock.locked():
            return True
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    return True
        except TimeoutError:
            return False

    def mark_load(self) -> None:
        """A load event happened (snapshot install, restore): every table needs a full resync."""
        for st in self.status.values():
            st.needs_full = True

    # ------------------------------------------------------------------ runs

    async def run_pending(self, skip: Collection[str] = ()) -> list[TableOutcome]:
        """Bring every table up to the current revision: full for tables that need it
        (after a load event or a failure), incremental for the rest. Tables in ``skip``
        (say, backing off after a failure) are left alone.

        Every table is planned from one consistent read, so the tables of a run all land
        on the same revision, and (unless an adapter suspends) no request handler runs
        between two tables' changes."""
        async with self._lock:
            full = [n for n, st in self.status.items() if st.needs_full and n not in skip]
            rest = [n for n in self._adapters if n not in full and n not in skip]
            work = self._project_full(self._store.read(lambda reader: self._read_work(reader, full, rest, "load")))
            return await self._run_tables(work)

    async def resync(self, table: str | None, kind: RunKind, *, dry_run: bool = False) -> list[TableOutcome]:
        """Full resync of one table (or all) as ``manual``/``audit``/``load``."""
        names = [self.adapter(table).name] if table else list(self._adapters)
        async with self._lock:
            work = self._project_full(self._store.read(lambda reader: self._read_work(reader, names, [], kind)))
            return await self._run_tables(work, dry_run=dry_run)

    async def _run_tables(self, work: dict[str, tuple[RunKind, _Work]], *, dry_run: bool = False) -> list[TableOutcome]:
        """Each table's run in turn; ``on_run`` with their outcomes once they are over
        (if one raises or is cancelled: with the outcomes so far). Under the lock."""
        outcomes: list[TableOutcome] = []
        try:
            for name, (kind, w) in work.items():
                outcomes.append(await self._execute(name, kind, w, dry_run=dry_run))
        finally:
            if self._on_run is not None:
                self._on_run(outcomes)
        return outcomes

    def _read_work(
        self, reader: Reader, full: list[str], incremental: list[str], full_kind: RunKind
    ) -> dict[str, tuple[RunKind, _Work]]:
        """Plan inputs for every table from one consistent read (runs under the store lock)."""
        revision = reader.revision
        full = list(full)
        stale = [n for n in incremental if self.status[n].applied_revision < revision]
        events: list[Event] = []
        if stale:
            try:
                events = reader.events_since(min(self.status[n].applied_revision for n in stale) + 1)
            except Compacted:  # history no longer reaches back: fall back to full
                full += stale
                stale = []
        out: dict[str, tuple[RunKind, _Work]] = {}
        # Full projections are O(table): they run after the lock is released, on a frozen
        # copy taken here (pointer copies), so the Raft apply thread is held up briefly.
        view = reader.frozen() if full else None
        for name in full:
            adapter = self._adapters[name]
            applied = self.status[name].applied_revision
            explained: set[str] = set()
            try:
                if full_kind == "audit" and applied < revision:
                    try:
                        explained = adapter.affected(reader, reader.events_since(applied + 1))
                    except Compacted:
                        explained = {"*"}  # cannot tell drift from change: count none
                out[name] = (full_kind, _Work(revision, None, {}, explained, view=view))
            except Exception as exc:  # noqa: BLE001 - one table's bad projection fails that table only
                out[name] = (full_kind, _Work(revision, None, {}, error=f"projection failed: {exc!r}"))
        # One pass over the run's events for every table (most commits change keys no
        # table watches); then each table looks only at the events under its prefixes.
        watched = [e for e in events if e.kv.key.startswith(self._watched)] if stale else []
        for name in stale:
            applied = self.status[name].applied_revision
            adapter = self._adapters[name]
            try:
                mine = [e for e in watched if e.revision > applied and e.kv.key.startswith(adapter.watches)]
                keys = adapter.affected(reader, mine) if mine else set()
                desired = {k: row for k in keys if (row := adapter.desired(reader, k)) is not None}
                out[name] = ("incremental", _Work(revision, keys, desired))
            except Exception as exc:  # noqa: BLE001 - as above
                out[name] = ("incremental", _Work(revision, set(), {}, error=f"projection failed: {exc!r}"))
        return out

    def _project_full(self, work: dict[str, tuple[RunKind, _Work]]) -> dict[str, tuple[RunKind, _Work]]:
        """Compute the full projections from their frozen views (outside the store lock)."""
        out = {}
        for name, (kind, w) in work.items():
            if w.view is not None and w.error is None:
                try:
                    w = _Work(w.revision, None, self._adapters[name].desired_all(w.view), w.explained)
                except Exception as exc:  # noqa: BLE001 - one table's bad projection fails that table only
                    w = _Work(w.revision, None, {}, error=f"projection failed: {exc!r}")
            out[name] = (kind, w)
        return out

    async def _execute(self, name: str, kind: RunKind, work: _Work, *, dry_run: bool = False) -> TableOutcome:
        adapter = self._adapters[name]
        st = self.status[name]
        started = self._clock()
        if work.error is not None:
            return self._record(name, kind, work, [], 0, "error", work.error, started)
        if (
            not dry_run
            and work.keys is not None
            and not work.keys
            and st.state == "in_sync"
            and work.revision >= st.applied_revision
        ):
            # An incremental run that touches no key of this healthy table (most commits,
            # for most tables): nothing to compare and nothing to apply; its revision moves.
            return self._record(name, kind, work, [], 0, None, None, started)
        actions = plan(work.desired, adapter.rows(), work.keys)
        if dry_run:
            return self._finish(TableOutcome(name, kind, True, work.revision, actions, dry_run=True))
        if work.revision < st.applied_revision:
            # Never move a table back to an older revision.
            return self._finish(TableOutcome(name, kind, True, st.applied_revision))
        drift = 0
        if kind == "audit" and "*" not in work.explained:
            drift = sum(1 for a in actions if a.key not in work.explained)
        st.state = "syncing"
        cause, error = None, None
        try:
            # Called even with no actions (a full run, or keys that need no change): an
            # adapter may check its own health here.
            # asyncio.timeout (not wait_for) runs the adapter in this task: no other
            # handler gets in between tables unless the adapter itself suspends.
            async with asyncio.timeout(self.action_timeout):
                await adapter.apply(actions)
        except TimeoutError:
            cause, error = "timeout", f"resync of {name} did not finish within {self.action_timeout}s"
        except Exception as exc:  # noqa: BLE001 - an adapter failure is an outcome, not a crash
            cause, error = "error", f"{type(exc).__name__}: {exc}"
        if cause is None:
            leftover = plan(work.desired, adapter.rows(), work.keys)
            if leftover:
                cause = "verification"
                error = f"{len(leftover)} row(s) still differ after apply (first: {leftover[0].key})"
        return self._record(name, kind, work, actions, drift, cause, error, started)

    def _record(
        self,
        name: str,
        kind: RunKind,
        work: _Work,
        actions: list[Action],
        drift: int,
        cause: str | None,
        error: str | None,
        started: float,
    ) -> TableOutcome:
        """Update the table's status with one run's result and report the outcome."""
        st = self.status[name]
        now = self._clock()
        duration = now - started
        if cause is None and actions:
            kinds = Counter(a.kind for a in actions)
            st.adds += kinds["add"]
            st.removes += kinds["remove"]
            st.modifies += kinds["modify"]
        outcome = TableOutcome(
            name, kind, cause is None, work.revision, actions, drift, error, cause, duration_s=duration
        )
        if cause is None:
            st.state = "in_sync"
            st.applied_revision = work.revision
            st.needs_full = False
            st.drift_count += drift
            st.failures = 0
            if work.keys is None:
                st.last_full_resync = {
                    "at": now,
                    "revision": work.revision,
                    "kind": kind,
                    "duration_ms": round(duration * 1000, 3),
                    "actions": len(actions),
                }
        else:
            st.state = "failed"
            st.needs_full = True
            st.failures += 1
            st.last_error = {"cause": cause, "message": error, "revision": work.revision, "at": now, "kind": kind}
        st.last_run = {
            "kind": kind,
            "decision": outcome.decision,
            "revision": work.revision,
            "at": now,
            "actions": len(actions),
            "duration_ms": round(duration * 1000, 3),
        }
        return self._finish(outcome)

    def _finish(self, outcome: TableOutcome) -> TableOutcome:
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        return outcome
