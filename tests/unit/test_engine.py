"""Unit tests of the generic ``resync.ResyncEngine``.

Committed state is a real ``rdb.StateMachine`` fed with commands built by
``rdb._commands`` (what a proposer puts in the log); the consistent reader simply runs
the read function against it. Blade tables are a plain in-memory fake adapter, or the
real N-blade/D-blade projections from ``node._blades``. No sockets, no sleeps (the one
timeout test waits 50 ms for the engine's own action timeout).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pytest

from node._tables import validate_row
from rdb import Event, StateMachine
from rdb import _commands as cmds
from resync import Action, Reader, ResyncEngine, Row, TableOutcome, UnknownTable, apply_plan, plan
from tests.ontap import REFERENCES, TABLES, BladeTable, build_blades

T = TypeVar("T")
PREFIX = "t/"


class Store:
    """A StateMachine plus a log index and request ids; its ``read`` is the consistent read."""

    def __init__(self, sm: StateMachine | None = None) -> None:
        self.sm = sm if sm is not None else StateMachine()
        self.index = self.sm.applied_index
        self._rids = itertools.count(1)
        self.reads = 0

    def _apply(self, command: bytes) -> dict[str, Any]:
        self.index += 1
        result = self.sm.apply(command, self.index)
        assert result["status"] == "ok", result
        return result

    def put(self, key: str, value: Any) -> int:
        return int(self._apply(cmds.put(key, value, request_id=f"rid-{next(self._rids)}"))["revision"])

    def delete(self, key: str) -> int:
        return int(self._apply(cmds.delete(key, request_id=f"rid-{next(self._rids)}"))["revision"])

    def read(self, fn: Callable[[Reader], T]) -> T:
        self.reads += 1
        return fn(self.sm)


class FakeTable:
    """Projects every key under ``t/`` whose value is a dict; records what the engine asks."""

    def __init__(self, name: str = "things", blade: str = "nblade") -> None:
        self.name = name
        self.blade = blade
        self.watches = (PREFIX,)
        self.affected_calls: list[list[str]] = []  # the keys of the events handed over
        self.data: dict[str, Row] = {}
        self.applied: list[list[Action]] = []
        self.desired_calls: list[str] = []
        self.mode: str | None = None  # None | "error" | "hang" | "drop"

    def desired_all(self, reader: Reader) -> dict[str, Row]:
        kvs, _ = reader.range(PREFIX)
        return {kv.key[len(PREFIX) :]: kv.value for kv in kvs if isinstance(kv.value, dict)}

    def affected(self, reader: Reader, events: Sequence[Event]) -> set[str]:
        self.affected_calls.append([e.kv.key for e in events])
        return {e.kv.key[len(PREFIX) :] for e in events if e.kv.key.startswith(PREFIX)}

    def desired(self, reader: Reader, key: str) -> Row | None:
        self.desired_calls.append(key)
        kv = reader.get(PREFIX + key)
        return kv.value if kv is not None and isinstance(kv.value, dict) else None

    def rows(self) -> Mapping[str, Row]:
        return self.data

    async def apply(self, actions: Sequence[Action]) -> None:
        self.applied.append(list(actions))
        if self.mode == "error":
            raise RuntimeError("disk on fire")
        if self.mode == "hang":
            await asyncio.sleep(10)
        if self.mode == "drop":
            return
        self.data = apply_plan(self.data, actions)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def make(
    store: Store | None = None, *tables: FakeTable, **kwargs: Any
) -> tuple[Store, list[FakeTable], ResyncEngine, list[TableOutcome]]:
    store = store or Store()
    adapters = list(tables) or [FakeTable()]
    seen: list[TableOutcome] = []
    engine = ResyncEngine(store, adapters, clock=Clock(), on_outcome=seen.append, **kwargs)
    return store, adapters, engine, seen


def fill(store: Store, n: int) -> None:
    for i in range(n):
        store.put(f"{PREFIX}k{i:03d}", {"i": i})


def counts(actions: Sequence[Action]) -> dict[str, int]:
    out = {"add": 0, "remove": 0, "modify": 0}
    for a in actions:
        out[a.kind] += 1
    return out


# ------------------------------------------------------------------ load and incremental


async def test_first_run_is_a_full_load() -> None:
    store, (table,), engine, seen = make()
    fill(store, 5)
    store.put("other/x", {"ignored": True})
    assert engine.status["things"].state == "never_synced"
    assert engine.status["things"].needs_full

    (out,) = await engine.run_pending()

    assert out.kind == "load" and out.ok and out.decision == "converged"
    assert out.revision == store.sm.revision == 6
    assert counts(out.actions) == {"add": 5, "remove": 0, "modify": 0}
    assert table.data == table.desired_all(store.sm)
    st = engine.status["things"]
    assert (st.state, st.applied_revision, st.needs_full, st.adds) == ("in_sync", 6, False, 5)
    assert st.last_full_resync is not None and st.last_full_resync["kind"] == "load"
    assert st.last_full_resync["revision"] == 6 and st.last_full_resync["actions"] == 5
    assert st.last_run is not None and st.last_run["decision"] == "converged"
    assert seen == [out]


async def test_full_load_removes_and_modifies_rows_the_table_should_not_have() -> None:
    store, (table,), engine, _ = make()
    fill(store, 3)
    table.data = {"k000": {"i": 0}, "k001": {"i": 99}, "stale": {"i": -1}}
    (out,) = await engine.run_pending()
    assert counts(out.actions) == {"add": 1, "remove": 1, "modify": 1}
    assert table.data == {"k000": {"i": 0}, "k001": {"i": 1}, "k002": {"i": 2}}


async def test_incremental_touches_only_the_affected_keys() -> None:
    store, (table,), engine, seen = make()
    fill(store, 100)
    await engine.run_pending()
    table.desired_calls.clear()
    table.applied.clear()

    store.put(f"{PREFIX}new", {"i": -1})
    store.put(f"{PREFIX}k005", {"i": 555})
    store.delete(f"{PREFIX}k007")
    store.put("other/y", 1)  # not this table's

    (out,) = await engine.run_pending()

    assert out.kind == "incremental" and out.ok
    assert out.revision == store.sm.revision
    assert out.actions == [
        Action("remove", "k007", None),
        Action("modify", "k005", {"i": 555}),
        Action("add", "new", {"i": -1}),
    ]
    assert table.applied == [out.actions]
    assert sorted(table.desired_calls) == ["k005", "k007", "new"]
    assert table.data == table.desired_all(store.sm)
    st = engine.status["things"]
    assert (st.adds, st.removes, st.modifies) == (101, 1, 1)
    assert st.applied_revision == store.sm.revision
    assert st.last_full_resync is not None and st.last_full_resync["kind"] == "load"  # incremental is not full
    assert [o.kind for o in seen] == ["load", "incremental"]


async def test_incremental_with_nothing_new_does_nothing() -> None:
    store, (table,), engine, _ = make()
    fill(store, 3)
    await engine.run_pending()
    table.applied.clear()
    assert await engine.run_pending() == []
    assert table.applied == []


async def test_a_put_with_an_equal_value_plans_no_action_but_advances_the_revision() -> None:
    store, (_table,), engine, _ = make()
    fill(store, 3)
    await engine.run_pending()
    rev = store.put(f"{PREFIX}k001", {"i": 1})
    (out,) = await engine.run_pending()
    assert out.ok and out.actions == [] and out.decision == "in_sync"
    assert engine.status["things"].applied_revision == rev


async def test_a_commit_that_touches_no_key_of_a_healthy_table_moves_it_without_calling_it() -> None:
    store, (table,), engine, seen = make()
    fill(store, 3)
    await engine.run_pending()
    calls = len(table.applied)
    rev = store.put("elsewhere/x", {"i": 1})  # under no prefix the table projects
    (out,) = await engine.run_pending()
    assert out.ok and out.kind == "incremental" and out.actions == [] and seen[-1] is out
    assert engine.status["things"].applied_revision == rev and engine.status["things"].state == "in_sync"
    assert len(table.applied) == calls  # not called: nothing to compare, nothing to apply
    # A run that has keys to compare, or a full one, calls the adapter even with no
    # actions (it may check its own health there).
    store.put(f"{PREFIX}k001", {"i": 1})
    await engine.run_pending()
    await engine.resync("things", "manual")
    assert table.applied[calls:] == [[], []]


async def test_a_commit_under_no_watched_prefix_asks_no_table_what_it_affects() -> None:
    a, b = FakeTable("a"), FakeTable("b")
    store, _, engine, _ = make(None, a, b)
    fill(store, 2)
    await engine.run_pending()
    rev = store.put("elsewhere/x", {"i": 1})
    outs = await engine.run_pending()
    assert [(o.table, o.ok, o.revision) for o in outs] == [("a", True, rev), ("b", True, rev)]
    assert a.affected_calls == b.affected_calls == []  # one pass over the events, no call


async def test_affected_sees_only_the_events_under_the_tables_watches() -> None:
    a, b = FakeTable("a"), FakeTable("b")
    b.watches = ("u/",)
    store, _, engine, _ = make(None, a, b)
    await engine.run_pending()
    store.put(f"{PREFIX}k1", {"i": 1})
    store.put("u/z", {"i": 2})
    store.put("elsewhere/x", {"i": 3})
    await engine.run_pending()
    assert a.affected_calls == [[f"{PREFIX}k1"]]
    assert b.affected_calls == [["u/z"]]


async def test_each_table_only_sees_events_after_its_own_applied_revision() -> None:
    a, b = FakeTable("a"), FakeTable("b")
    store, _, engine, _ = make(None, a, b)
    fill(store, 2)
    await engine.run_pending()
    store.put(f"{PREFIX}k000", {"i": 10})
    b.mode = "error"
    await engine.run_pending()  # a moves on; b fails and needs a full resync
    assert engine.status["a"].applied_revision == 3 and engine.status["b"].applied_revision == 2
    b.mode = None
    store.put(f"{PREFIX}k001", {"i": 11})
    outs = {o.table: o for o in await engine.run_pending()}
    assert outs["b"].kind == "load" and counts(outs["b"].actions)["modify"] == 2
    assert outs["a"].kind == "incremental" and outs["a"].actions == [Action("modify", "k001", {"i": 11})]
    assert a.data == b.data == a.desired_all(store.sm)


async def test_skip_leaves_a_table_alone() -> None:
    a, b = FakeTable("a"), FakeTable("b")
    store, _, engine, _ = make(None, a, b)
    fill(store, 2)
    outs = await engine.run_pending(skip={"b"})
    assert [o.table for o in outs] == ["a"]
    assert b.applied == [] and engine.status["b"].needs_full


async def test_mark_load_forces_a_full_resync() -> None:
    store, (table,), engine, _ = make()
    fill(store, 2)
    await engine.run_pending()
    table.data = {**table.data, "junk": {"i": 0}}  # would survive an incremental run
    store.put(f"{PREFIX}k000", {"i": 7})
    engine.mark_load()
    (out,) = await engine.run_pending()
    assert out.kind == "load"
    assert table.data == table.desired_all(store.sm)


async def test_compacted_history_falls_back_to_a_full_resync() -> None:
    store, (table,), engine, _ = make(Store(StateMachine(history_limit=2)))
    fill(store, 3)
    await engine.run_pending()
    table.data = {**table.data, "junk": {"i": 0}}
    for i in range(5):
        store.put(f"{PREFIX}k{i:03d}", {"i": 100 + i})
    assert store.sm.compacted_revision > engine.status["things"].applied_revision + 1

    (out,) = await engine.run_pending()

    assert out.kind == "load" and out.ok
    assert table.data == table.desired_all(store.sm)
    assert "junk" not in table.data


async def test_compacted_history_just_reaching_back_stays_incremental() -> None:
    store, (_table,), engine, _ = make(Store(StateMachine(history_limit=2)))
    fill(store, 3)
    await engine.run_pending()
    store.put(f"{PREFIX}k000", {"i": 9})
    store.put(f"{PREFIX}k001", {"i": 9})
    (out,) = await engine.run_pending()
    assert out.kind == "incremental" and len(out.actions) == 2


# ------------------------------------------------------------------ failures


async def test_adapter_error_is_an_outcome_not_a_crash() -> None:
    store, (table,), engine, seen = make()
    fill(store, 2)
    await engine.run_pending()
    store.put(f"{PREFIX}k000", {"i": 5})
    table.mode = "error"

    (out,) = await engine.run_pending()

    assert not out.ok and out.cause == "error" and out.decision == "failed:error"
    assert out.error is not None and "RuntimeError" in out.error and "disk on fire" in out.error
    st = engine.status["things"]
    assert st.state == "failed" and st.needs_full and st.failures == 1
    assert st.applied_revision == 2  # unchanged
    assert st.modifies == 0  # counts only what succeeded
    assert st.last_error is not None and st.last_error["cause"] == "error" and st.last_error["revision"] == 3
    assert seen[-1] is out

    (again,) = await engine.run_pending()  # still failing: full retry, failures count up
    assert again.kind == "load" and not again.ok and engine.status["things"].failures == 2

    table.mode = None
    (fixed,) = await engine.run_pending()
    assert fixed.kind == "load" and fixed.ok
    st = engine.status["things"]
    assert (st.state, st.needs_full, st.failures, st.applied_revision) == ("in_sync", False, 0, 3)
    assert st.last_error is not None  # the last error stays visible
    assert table.data == table.desired_all(store.sm)


async def test_apply_is_called_even_with_nothing_to_do_so_a_broken_adapter_still_fails() -> None:
    _store, (table,), engine, _ = make()
    table.mode = "error"
    (out,) = await engine.run_pending()
    assert out.actions == [] and not out.ok and out.cause == "error"
    assert table.applied == [[]]


async def test_hanging_adapter_times_out() -> None:
    store, (table,), engine, _ = make(action_timeout=0.05)
    fill(store, 2)
    table.mode = "hang"
    (out,) = await engine.run_pending()
    assert not out.ok and out.cause == "timeout"
    assert out.error is not None and "0.05" in out.error
    st = engine.status["things"]
    assert st.state == "failed" and st.needs_full and st.applied_revision == 0
    assert st.last_error is not None and st.last_error["cause"] == "timeout"


async def test_adapter_that_drops_actions_fails_verification() -> None:
    store, (table,), engine, _ = make()
    fill(store, 3)
    table.mode = "drop"
    (out,) = await engine.run_pending()
    assert not out.ok and out.cause == "verification"
    assert out.error is not None and "3 row(s)" in out.error and "k000" in out.error
    st = engine.status["things"]
    assert st.state == "failed" and st.needs_full and st.applied_revision == 0 and st.adds == 0


async def test_incremental_verification_only_checks_the_affected_keys() -> None:
    store, (table,), engine, _ = make()
    fill(store, 3)
    await engine.run_pending()
    table.data = {**table.data, "junk": {"i": 0}}  # unrelated drift: the audit's job
    store.put(f"{PREFIX}k000", {"i": 5})
    (out,) = await engine.run_pending()
    assert out.ok and out.kind == "incremental"


# ------------------------------------------------------------------ audit, manual, dry run


async def test_audit_counts_tampered_rows_as_drift_and_repairs_them() -> None:
    store, (table,), engine, _ = make()
    fill(store, 10)
    await engine.run_pending()
    table.data = dict(table.data)
    table.data["k001"] = {"i": "tampered"}
    del table.data["k002"]

    (out,) = await engine.resync("things", "audit")

    assert out.kind == "audit" and out.ok and out.drift == 2
    assert {(a.kind, a.key) for a in out.actions} == {("modify", "k001"), ("add", "k002")}
    assert engine.status["things"].drift_count == 2
    assert engine.status["things"].last_full_resync is not None
    assert engine.status["things"].last_full_resync["kind"] == "audit"
    assert table.data == table.desired_all(store.sm)

    (clean,) = await engine.resync("things", "audit")
    assert clean.drift == 0 and clean.actions == []
    assert engine.status["things"].drift_count == 2


async def test_audit_does_not_count_legitimate_changes_since_the_last_resync_as_drift() -> None:
    store, (table,), engine, _ = make()
    fill(store, 10)
    await engine.run_pending()
    table.data = dict(table.data)
    table.data["k001"] = {"i": "tampered"}
    table.data["extra"] = {"i": "tampered"}
    # Committed but not yet resynced: these are change, not drift.
    store.put(f"{PREFIX}k003", {"i": 33})
    store.put(f"{PREFIX}brand_new", {"i": 1})
    store.delete(f"{PREFIX}k004")

    (out,) = await engine.resync("things", "audit")

    assert out.ok and out.drift == 2
    assert len(out.actions) == 5
    assert table.data == table.desired_all(store.sm)
    assert engine.status["things"].drift_count == 2


async def test_audit_counts_drift_when_the_commits_since_the_last_resync_touched_other_tables() -> None:
    store, (table,), engine, _ = make()
    fill(store, 4)
    await engine.run_pending()
    table.data = dict(table.data)
    table.data["k001"] = {"i": "tampered"}
    table.data["k002"] = {"i": "tampered"}
    store.put("other/z", {"not": "mine"})  # a commit this table does not project

    (out,) = await engine.resync("things", "audit")

    assert out.ok and out.drift == 2


async def test_audit_with_compacted_history_counts_no_drift_rather_than_guessing() -> None:
    store, (table,), engine, _ = make(Store(StateMachine(history_limit=2)))
    fill(store, 3)
    await engine.run_pending()
    table.data = {**table.data, "k000": {"i": "tampered"}}
    for i in range(4):
        store.put(f"{PREFIX}n{i}", {"i": i})
    (out,) = await engine.resync("things", "audit")
    assert out.ok and out.drift == 0
    assert table.data == table.desired_all(store.sm)


async def test_dry_run_returns_the_plan_and_changes_nothing() -> None:
    store, (table,), engine, seen = make()
    fill(store, 3)
    await engine.run_pending()
    before_status = vars(engine.status["things"]).copy()
    table.data = {"k000": {"i": 0}, "k001": {"i": 42}, "gone": {"i": 1}}
    before_rows = dict(table.data)
    table.applied.clear()

    (out,) = await engine.resync("things", "manual", dry_run=True)

    assert out.dry_run and out.ok and out.decision == "planned"
    assert out.actions == plan(table.desired_all(store.sm), before_rows)
    assert [a.key for a in out.actions] == ["gone", "k001", "k002"]
    assert out.to_dict()["plan"] == [a.to_dict() for a in out.actions]
    assert table.data == before_rows and table.applied == []
    assert vars(engine.status["things"]) == before_status
    assert seen[-1] is out


async def test_manual_resync_of_every_table_and_of_an_unknown_one() -> None:
    a, b = FakeTable("a"), FakeTable("b")
    store, _, engine, _ = make(None, a, b)
    fill(store, 2)
    outs = await engine.resync(None, "manual")
    assert [(o.table, o.kind, o.ok) for o in outs] == [("a", "manual", True), ("b", "manual", True)]
    assert engine.tables == ["a", "b"] and engine.adapter("a") is a
    with pytest.raises(UnknownTable):
        await engine.resync("nope", "manual")
    with pytest.raises(KeyError):
        engine.adapter("nope")


async def test_never_moves_a_table_back_to_an_older_revision() -> None:
    store, (table,), engine, _ = make()
    fill(store, 3)
    await engine.run_pending()
    assert engine.status["things"].applied_revision == 3
    rows = dict(table.data)
    table.applied.clear()

    older = Store()
    older.put(f"{PREFIX}k000", {"i": "old"})  # revision 1
    store.sm = older.sm

    (out,) = await engine.resync("things", "manual")

    assert out.ok and out.revision == 3 and out.actions == []
    assert table.data == rows and table.applied == []
    assert engine.status["things"].applied_revision == 3


async def test_outcome_to_dict() -> None:
    store, _, engine, _ = make()
    fill(store, 2)
    (out,) = await engine.run_pending()
    d = out.to_dict()
    assert d["table"] == "things" and d["kind"] == "load" and d["decision"] == "converged"
    assert d["actions"] == 2 and d["plan"] is None and d["ok"] is True and d["cause"] is None
    status = engine.status["things"].to_dict(store_revision=5)
    assert status["lag"] == 3 and status["state"] == "in_sync" and status["applied_revision"] == 2


# ------------------------------------------------------------------ the real blade projections


def row(table: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    key = TABLES[table].key_of(fields)
    return TABLES[table].storage_key(key), validate_row(TABLES[table], key, fields)


def blade_store() -> Store:
    store = Store(StateMachine(references=REFERENCES))
    for key, value in (
        row("vservers", name="vs1", protocols=["nfs", "cifs"]),
        row("aggregates", name="aggr1", home_node="n1", size_mb=100),
        row("aggregates", name="aggr2", home_node="n2", size_mb=100),
        row("volumes", name="v1", vserver="vs1", aggregate="aggr1", size_mb=1, junction_path="/v1"),
        row("volumes", name="v2", vserver="vs1", aggregate="aggr1", size_mb=1, junction_path="/v2"),
        row("volumes", name="v3", vserver="vs1", aggregate="aggr2", size_mb=1, junction_path="/v3"),
        row("volumes", name="v4", vserver="vs1", aggregate="aggr2", size_mb=1, junction_path="/v4"),
    ):
        store.put(key, value)
    return store


def blade_engine(store: Store) -> tuple[dict[str, BladeTable], ResyncEngine]:
    blades = build_blades("n1")
    tables = {"volumes": blades["dblade"]["volumes"], "vldb": blades["nblade"]["vldb"]}
    tables["aggregates"] = blades["dblade"]["aggregates"]
    return tables, ResyncEngine(store, list(tables.values()), clock=Clock())


async def test_dblade_volumes_and_vldb_project_by_aggregate_home() -> None:
    store = blade_store()
    tables, engine = blade_engine(store)
    outs = await engine.run_pending()
    assert all(o.ok and o.kind == "load" for o in outs)
    assert sorted(tables["volumes"].rows()) == ["v1", "v2"]
    assert sorted(tables["aggregates"].rows()) == ["aggr1"]
    assert sorted(tables["vldb"].rows()) == ["v1", "v2", "v3", "v4"]
    assert {k: r["node"] for k, r in tables["vldb"].rows().items()} == {"v1": "n1", "v2": "n1", "v3": "n2", "v4": "n2"}
    assert tables["vldb"].rows()["v3"] == {
        "volume": "v3",
        "vserver": "vs1",
        "aggregate": "aggr2",
        "node": "n2",
        "junction_path": "/v3",
        "state": "online",
        "export_policy": "default",
    }


async def test_moving_an_aggregate_reprojects_exactly_its_volumes_incrementally() -> None:
    store = blade_store()
    tables, engine = blade_engine(store)
    await engine.run_pending()

    key, aggr2 = row("aggregates", name="aggr2", home_node="n1", size_mb=100)
    store.put(key, aggr2)
    outs = {o.table: o for o in await engine.run_pending()}

    assert all(o.kind == "incremental" and o.ok for o in outs.values())
    assert [(a.kind, a.key) for a in outs["volumes"].actions] == [("add", "v3"), ("add", "v4")]
    assert [(a.kind, a.key) for a in outs["vldb"].actions] == [("modify", "v3"), ("modify", "v4")]
    assert all(a.row is not None and a.row["node"] == "n1" for a in outs["vldb"].actions)
    assert [(a.kind, a.key) for a in outs["aggregates"].actions] == [("add", "aggr2")]
    for table in tables.values():
        assert dict(table.rows()) == table.desired_all(store.sm)

    # And back: the volumes leave this node's D-blade.
    store.put(*row("aggregates", name="aggr2", home_node="n3", size_mb=100))
    outs = {o.table: o for o in await engine.run_pending()}
    assert [(a.kind, a.key) for a in outs["volumes"].actions] == [("remove", "v3"), ("remove", "v4")]
    assert [(a.kind, a.key) for a in outs["vldb"].actions] == [("modify", "v3"), ("modify", "v4")]
    assert sorted(tables["volumes"].rows()) == ["v1", "v2"]


async def test_moving_a_volume_to_another_aggregate_follows_it() -> None:
    store = blade_store()
    tables, engine = blade_engine(store)
    await engine.run_pending()
    store.put(*row("volumes", name="v3", vserver="vs1", aggregate="aggr1", size_mb=1, junction_path="/v3"))
    store.put(*row("volumes", name="v1", vserver="vs1", aggregate="aggr2", size_mb=1, junction_path="/v1"))
    outs = {o.table: o for o in await engine.run_pending()}
    assert [(a.kind, a.key) for a in outs["volumes"].actions] == [("remove", "v1"), ("add", "v3")]
    assert sorted(tables["volumes"].rows()) == ["v2", "v3"]
    assert tables["vldb"].rows()["v1"]["node"] == "n2" and tables["vldb"].rows()["v3"]["node"] == "n1"
