"""Agents: data-plane daemons in their own process that hold blade tables of this node.

An agent is declared per node (``--agent NAME=TABLE[,TABLE...]``) and is, to the fencing
policy, one more table: ``agent:NAME``. Every consumer that depends on one of the
agent's tables also depends on ``agent:NAME`` (``with_agents``), so an agent that has
not loaded yet, whose callback failed, that lags past the policy's bound or stops
reporting for longer than ``heartbeat_timeout`` fences exactly those consumers, on this
node only; a clean report (``state: ok`` at a revision at least the one the node must
reach) lifts it. The transitions are the policy's events (``resync_failed``,
``fenced``, ``unfenced``) in the node's event log.

The wire protocol (README, "Agents"): ``GET /v1/agents/NAME/load`` (the agent's tables
at one revision, plus a cursor), ``GET /v1/agents/NAME/stream?cursor=C&epoch=E`` (SSE:
``changes`` batches in revision order, ``reload`` when the cursor is no longer served),
``POST /v1/agents/NAME/report`` (applied revision, state, failures: the heartbeat).

The stream's rows are the node's own blade tables: every row change they make is
appended to one change log (``AgentHub.record``), numbered by a node-local sequence (the
cursor). A batch is sent only when the resync engine is idle, so every table of the
batch is at the batch's revision. A snapshot load (install, restore) starts a new epoch:
streams of the old epoch end with ``reload``, as does a cursor older than the log keeps.

Threading: everything here runs on the node's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fencing import FencePolicy, LagObserved, ResyncFailed, ResyncOk, ScopedDependency
from node._exceptions import ApiError

if TYPE_CHECKING:
    from node._runtime import BladeRuntime

AGENT_PREFIX = "agent:"
#: Changes kept for streams; a cursor older than this many changes gets ``reload``.
LOG_LIMIT = 200_000
#: A stream sends at least one batch (maybe empty: a heartbeat) this often.
STREAM_HEARTBEAT = 0.25
DEFAULT_HEARTBEAT_TIMEOUT = 1.0


def agent_table(name: str) -> str:
    """The policy table standing for agent ``name``."""
    return AGENT_PREFIX + name


def parse_agents(specs: list[str]) -> dict[str, frozenset[str]]:
    """``NAME=T1,T2`` strings -> {name: tables}. Raises ``ValueError`` naming the bad one."""
    out: dict[str, frozenset[str]] = {}
    for spec in specs:
        name, sep, tables = spec.partition("=")
        names = frozenset(t.strip() for t in tables.split(",") if t.strip())
        if not sep or not name or not names:
            raise ValueError(f"agent {spec!r} must look like NAME=TABLE[,TABLE...]")
        if name in out:
            raise ValueError(f"agent {name!r} is declared twice")
        out[name] = names
    return out


def with_agents(policy: FencePolicy, agents: Mapping[str, frozenset[str]]) -> FencePolicy:
    """``policy`` where every consumer that depends on a table an agent holds (node-wide
    or scoped) also depends on that agent's ``agent:NAME`` table. Pure."""
    if not agents:
        return policy

    def extend(tables: frozenset[str]) -> frozenset[str]:
        return tables | {agent_table(a) for a, held in agents.items() if held & tables}

    deps = {c: extend(t) for c, t in policy.dependencies.items()}
    scoped = {
        c: tuple(ScopedDependency(r.vservers, extend(r.tables)) for r in rules) for c, rules in policy.scoped.items()
    }
    return replace(policy, dependencies=deps, scoped=scoped)


@dataclass
class AgentRecord:
    """What this node knows of one agent (loop thread)."""

    name: str
    tables: frozenset[str]
    state: str = "missing"  # missing | loading | ok | failed | lost
    applied_revision: int = 0
    last_report: float | None = None  # policy clock
    error: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    drift_total: int = 0
    reports: int = 0
    loads: int = 0
    streams: int = 0
    behind_since: float | None = None


class AgentHub:
    """The agents this node expects, their change log and their health (loop thread)."""

    def __init__(
        self,
        runtime: BladeRuntime,
        agents: Mapping[str, frozenset[str]],
        *,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    ) -> None:
        unknown = sorted({t for held in agents.values() for t in held} - set(runtime.tables))
        if unknown:
            raise ValueError(f"agents hold unknown blade table(s) {unknown}; known: {sorted(runtime.tables)}")
        self.runtime = runtime
        self.heartbeat_timeout = heartbeat_timeout
        self.agents = {name: AgentRecord(name, tables) for name, tables in agents.items()}
        held = {t for a in self.agents.values() for t in a.tables}
        #: (seq, table, key, row or None); ``_base`` is the seq before ``_log[0]``.
        self._log: list[tuple[int, str, str, dict[str, Any] | None]] = []
        self._base = 0
        self.seq = 0
        self.epoch = 1
        self._tick = asyncio.Event()
        for name in held:
            runtime.tables[name].on_change = self.record
        runtime.store.add_load_listener(self._new_epoch)

    # ------------------------------------------------------------ the change log

    def record(self, table: str, key: str, row: Mapping[str, Any] | None) -> None:
        """A blade table changed one row (called by ``ProjectedTable``)."""
        self.seq += 1
        self._log.append((self.seq, table, key, None if row is None else dict(row)))
        if len(self._log) > 2 * LOG_LIMIT:
            drop = len(self._log) - LOG_LIMIT
            self._base = self._log[drop - 1][0]
            del self._log[:drop]

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.wake()

    def since(self, cursor: int, tables: frozenset[str]) -> list[tuple[int, str, str, dict[str, Any] | None]] | None:
        """Changes to ``tables`` after ``cursor``; None if the log no longer reaches back."""
        if cursor < self._base or cursor > self.seq:
            return None
        start = cursor - self._base
        return [e for e in self._log[start:] if e[1] in tables]

    async def wait_tick(self, timeout: float) -> None:
        """Wait for the next ``wake`` (or ``timeout`` seconds)."""
        tick = self._tick
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tick.wait(), timeout)

    def heartbeat(self, name: str) -> bool:
        """A sign of life from an in-process agent (a file sink) that has nothing new to
        report. True if the agent had been declared lost (it must report in full again)."""
        rec = self.agents[name]
        rec.last_report = self.runtime.clock()
        return rec.state == "lost"

    def wake(self) -> None:
        """Let every stream look for news now (after a worker iteration, a report)."""
        self._tick.set()
        self._tick = asyncio.Event()

    # ------------------------------------------------------------ health

    def record_of(self, name: str) -> AgentRecord:
        try:
            return self.agents[name]
        except KeyError:
            raise ApiError(
                404, "unknown_agent", f"this node expects no agent {name!r} (declared: {sorted(self.agents)})"
            ) from None

    def report(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one report; returns what the node now thinks of the agent."""
        rec = self.record_of(name)
        state = body.get("state")
        revision = body.get("applied_revision")
        if state not in ("ok", "failed", "loading") or not isinstance(revision, int) or revision < 0:
            raise ApiError(422, "bad_report", "a report needs state ok|failed|loading and applied_revision >= 0")
        now = self.runtime.clock()
        rec.last_report = now
        rec.reports += 1
        drift = body.get("drift")
        if isinstance(drift, int) and drift > 0:
            rec.drift_total += drift
        table = agent_table(name)
        health = self.runtime.fence_state.tables.get(table)
        if state == "ok":
            advanced = revision != rec.applied_revision
            rec.applied_revision = revision
            rec.error, rec.failures = None, []
            if rec.state != "ok" or advanced or health is None or not health.ok:
                rec.state = "ok"
                self.runtime.observe(ResyncOk(table, revision))
        elif state == "failed":
            error = str(body.get("error") or "callback failed")
            failures = body.get("failures")
            rec.failures = [f for f in failures if isinstance(f, dict)][:20] if isinstance(failures, list) else []
            if rec.state != "failed" or error != rec.error:
                rec.state, rec.error = "failed", error
                self.runtime.observe(ResyncFailed(table, "agent_failed", f"agent {name}: {error}", revision))
        else:
            rec.state = "loading" if rec.state in ("missing", "lost", "loading") else rec.state
        self.wake()
        return self.status_of(rec)

    def check(self) -> None:
        """Heartbeat and lag checks; called after every worker iteration and by ``run``."""
        now = self.runtime.clock()
        for rec in self.agents.values():
            table = agent_table(rec.name)
            if rec.last_report is not None and rec.state != "lost" and now - rec.last_report > self.heartbeat_timeout:
                rec.state = "lost"
                silence = now - rec.last_report
                message = f"agent {rec.name} has not reported for {silence:.1f}s"
                self.runtime.observe(ResyncFailed(table, "agent_lost", message, rec.applied_revision))
                continue
            if rec.state != "ok":
                continue
            target = self._node_revision(rec)
            if rec.applied_revision >= target:
                rec.behind_since = None
                continue
            if rec.behind_since is None:
                rec.behind_since = now
            self.runtime.observe(
                LagObserved(table, target - rec.applied_revision, now - rec.behind_since, self.runtime.store.revision)
            )

    async def run(self) -> None:
        """Check every 50 ms even if the worker is idle (a silent agent is noticed)."""
        while True:
            await asyncio.sleep(0.05)
            self.check()

    def _node_revision(self, rec: AgentRecord) -> int:
        return self.runtime.applied_revision(rec.tables)

    def fenced_for(self, rec: AgentRecord, *, settled: bool = True) -> list[dict[str, Any]]:
        """The fences on consumers that depend on the agent (what its guard must honour),
        decided now, as the data-plane guard decides a request (``BladeRuntime.verdict``):
        the fences raised so far can lag the facts (a node that has just restarted and is
        not caught up yet has raised none, and an agent that loaded from it then served
        9 s old config). ``settled``: the caller waited for a half-way resync run."""
        table = agent_table(rec.name)
        deps = self.runtime.policy.dependencies
        scoped = self.runtime.policy.scoped
        mine = {c for c, t in deps.items() if table in t} | {
            c for c, rules in scoped.items() if any(table in r.tables for r in rules)
        }
        verdicts = ((c, self.runtime.verdict(c, settled=settled)) for c in sorted(mine))
        return [f.to_dict(self.runtime.clock_offset) for _, f in verdicts if f is not None]

    def status_of(self, rec: AgentRecord) -> dict[str, Any]:
        node_rev = self._node_revision(rec)
        age = None if rec.last_report is None else round(self.runtime.clock() - rec.last_report, 3)
        return {
            "tables": sorted(rec.tables),
            "state": rec.state,
            "applied_revision": rec.applied_revision,
            "lag_revisions": max(0, node_rev - rec.applied_revision) if rec.state != "missing" else None,
            "last_report_age": age,
            "error": rec.error,
            "failures": rec.failures,
            "drift_total": rec.drift_total,
            "loads": rec.loads,
            "streams": rec.streams,
            "fenced": [f["protocol"] for f in self.fenced_for(rec)],
        }

    def status(self) -> dict[str, Any]:
        return {name: self.status_of(rec) for name, rec in self.agents.items()}

    def applied_revision(self) -> int | None:
        """The lowest revision the node's agents reflect (None: it has none)."""
        return min((r.applied_revision for r in self.agents.values()), default=None)

    # ------------------------------------------------------------ load and stream

    async def load(self, name: str) -> dict[str, Any]:
        """The agent's tables at one revision, with the cursor its stream starts from.
        Raises ``ApiError`` 503 while a table it holds has failed on this node."""
        rec = self.record_of(name)
        if not await self.runtime.engine.wait_idle(self.runtime.settle_timeout):
            raise ApiError(503, "resync_in_progress", "a resync is still applying changes; retry")
        bad = sorted(t for t in rec.tables if not _table_ok(self.runtime, t))
        if bad:
            raise ApiError(503, "table_failed", f"blade table(s) {bad} cannot be trusted on this node now; retry")
        rec.loads += 1
        rec.state = "loading" if rec.state in ("missing", "lost") else rec.state
        rec.last_report = self.runtime.clock()  # a load is a sign of life
        tables = {t: dict(self.runtime.tables[t].rows()) for t in sorted(rec.tables)}
        return {
            "agent": name,
            "node": self.runtime.node_id,
            "revision": self._node_revision(rec),
            "cursor": self.seq,
            "epoch": self.epoch,
            "tables": tables,
            "fenced": self.fenced_for(rec),
        }

    async def stream(self, name: str, cursor: int, epoch: int) -> AsyncIterator[bytes]:
        """SSE frames for agent ``name`` from ``cursor``; ends after a ``reload`` frame."""
        rec = self.record_of(name)
        rec.streams += 1
        sent_revision = -1
        last_sent = 0.0
        try:
            while True:
                if epoch != self.epoch:
                    yield _frame("reload", {"reason": "snapshot_loaded", "epoch": self.epoch})
                    return
                frame = None
                if await self.runtime.engine.wait_idle(self.runtime.settle_timeout):
                    ok = all(_table_ok(self.runtime, t) for t in rec.tables)
                    changes = self.since(cursor, rec.tables) if ok else []
                    if changes is None:
                        yield _frame("reload", {"reason": "cursor_compacted", "epoch": self.epoch})
                        return
                    revision = self._node_revision(rec) if ok else sent_revision
                    now = time.monotonic()
                    if changes or revision > sent_revision or now - last_sent >= STREAM_HEARTBEAT:
                        if ok:
                            cursor = self.seq
                        batch = [{"table": t, "key": k, "row": r} for _, t, k, r in changes]
                        body = {
                            "revision": max(revision, sent_revision),
                            "cursor": cursor,
                            "changes": batch,
                            "fenced": self.fenced_for(rec),
                        }
                        frame = _frame("changes", body)
                        sent_revision, last_sent = max(revision, sent_revision), now
                if frame is not None:
                    yield frame
                await self.wait_tick(STREAM_HEARTBEAT)
        finally:
            rec.streams -= 1


def _table_ok(runtime: BladeRuntime, table: str) -> bool:
    health = runtime.fence_state.tables.get(table)
    return health is None or health.ok


def _frame(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
