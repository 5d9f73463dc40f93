"""Model-based test: ``StateMachine`` against a naive dict model.

Random sequences of put / delete / CAS put / CAS delete / txn / barrier / retried
request ids / snapshot+restore over a small key alphabet. After every step the results
(status, revision, and the rest of the answer), the full ``range("")``, the revision and
the retained watch history must match the model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rdb import Compacted, KeyValue, StateMachine
from rdb import _commands as cmds
from rdb._state import _for_dedup

KEYS = ["a", "b", "c", "a/1", "a/2"]
VALUES: list[Any] = [0, 1, 2, "x", "y", None, b"z", [1, 2], {"k": "v"}]
HISTORY_LIMIT = 12
DEDUP_LIMIT = 40

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)


@dataclass(frozen=True)
class MKV:
    value: Any
    create: int
    mod: int
    version: int

    def as_kv(self, key: str) -> KeyValue:
        return KeyValue(key, self.value, self.create, self.mod, self.version)


class Model:
    """The obvious implementation: a dict, a revision counter and an event list."""

    def __init__(self) -> None:
        self.data: dict[str, MKV] = {}
        self.revision = 0
        self.events: list[tuple[int, str, str, Any]] = []  # (revision, type, key, value)
        self.compacted = 0

    def _event(self, revision: int, kind: str, key: str, value: Any) -> None:
        self.events.append((revision, kind, key, value))
        while len(self.events) > HISTORY_LIMIT:
            self.compacted = self.events.pop(0)[0]

    def _current(self, key: str) -> dict[str, Any] | None:
        m = self.data.get(key)
        return None if m is None else m.as_kv(key).to_dict()

    def _write(self, key: str, value: Any, revision: int) -> MKV:
        old = self.data.get(key)
        m = MKV(value, revision, revision, 1) if old is None else MKV(value, old.create, revision, old.version + 1)
        self.data[key] = m
        self._event(revision, "put", key, value)
        return m

    def _remove(self, key: str, revision: int) -> None:
        del self.data[key]
        self._event(revision, "delete", key, None)

    def put(self, key: str, value: Any, prev: int | None) -> dict[str, Any]:
        cur = self.data.get(key)
        if prev is not None and (cur.mod if cur else 0) != prev:
            return {"status": "conflict", "revision": self.revision, "current": self._current(key)}
        self.revision += 1
        m = self._write(key, value, self.revision)
        return {"status": "ok", "revision": self.revision, "version": m.version}

    def delete(self, key: str, prev: int | None) -> dict[str, Any]:
        cur = self.data.get(key)
        if prev is not None and (cur.mod if cur else 0) != prev:
            return {"status": "conflict", "revision": self.revision, "current": self._current(key)}
        if cur is None:
            return {"status": "not_found", "revision": self.revision}
        self.revision += 1
        self._remove(key, self.revision)
        return {"status": "ok", "revision": self.revision}

    def compare(self, c: dict[str, Any]) -> bool:
        m = self.data.get(c["key"])
        target = c["target"]
        if target == "value":
            actual = None if m is None else m.value
        else:
            field = {"mod_revision": "mod", "create_revision": "create", "version": "version"}[target]
            actual = 0 if m is None else getattr(m, field)
        expected = c["value"]
        op = c["result"]
        if op == "==":
            return bool(actual == expected)
        if op == "!=":
            return bool(actual != expected)
        try:
            return bool(actual < expected) if op == "<" else bool(actual > expected)
        except TypeError:
            return False

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]) -> Any:
        ok = all([self.compare(c) for c in compare])
        ops = success if ok else failure
        will_write = any(op["op"] == "put" or (op["op"] == "delete" and op["key"] in self.data) for op in ops)
        revision = self.revision + (1 if will_write else 0)
        responses: list[dict[str, Any]] = []
        for op in ops:
            key = op["key"]
            if op["op"] == "get":
                responses.append({"op": "get", "kv": self._current(key)})
            elif op["op"] == "put":
                self._write(key, op["value"], revision)
                responses.append({"op": "put", "revision": revision})
            else:
                existed = key in self.data
                if existed:
                    self._remove(key, revision)
                responses.append({"op": "delete", "deleted": existed})
        self.revision = revision
        return {"status": "ok", "succeeded": ok, "revision": revision, "responses": responses}


_INT_TARGETS = ["mod_revision", "create_revision", "version"]

# A compare value is either a literal or ("rel", offset): the key's current attribute
# plus offset, resolved when the rule runs, so ==, <, > hit their boundaries often.
compares = st.fixed_dictionaries(
    {
        "key": keys,
        "result": st.sampled_from(["==", "!=", "<", ">"]),
        "target": st.sampled_from([*_INT_TARGETS, "value"]),
        "value": st.one_of(st.tuples(st.just("rel"), st.integers(-1, 1)), values, st.integers(0, 8)),
    }
)


ops = st.one_of(
    st.builds(lambda k: {"op": "get", "key": k}, keys),
    st.builds(lambda k, v: {"op": "put", "key": k, "value": v}, keys, values),
    st.builds(lambda k: {"op": "delete", "key": k}, keys),
)


def no_duplicate_writes(branch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop writes to a key already written earlier in the branch (the builder refuses them)."""
    written: set[str] = set()
    out = []
    for op in branch:
        if op["op"] != "get":
            if op["key"] in written:
                continue
            written.add(op["key"])
        out.append(op)
    return out


branches = st.lists(ops, max_size=5).map(no_duplicate_writes)


class StateMachineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sm = StateMachine(history_limit=HISTORY_LIMIT, dedup_limit=DEDUP_LIMIT)
        self.model = Model()
        self.index = 0
        self.next_rid = 0
        self.applied: list[tuple[bytes, dict[str, Any]]] = []  # recent (command, original result)

    @initialize()
    def start(self) -> None:
        self.check()

    # ---------------------------------------------------------------- helpers

    def rid(self) -> str:
        self.next_rid += 1
        return f"r{self.next_rid}"

    def apply(self, command: bytes, expected: dict[str, Any]) -> None:
        self.index += 1
        result = self.sm.apply(command, self.index)
        assert result == expected
        assert "duplicate" not in result
        self.applied.append((command, copy.deepcopy(result)))
        del self.applied[:-DEDUP_LIMIT]  # only ids still remembered by the machine

    def prev_choice(self, key: str, choice: str | int | None) -> int | None:
        if choice == "current":
            m = self.model.data.get(key)
            return m.mod if m else 0
        if choice == "stale":
            m = self.model.data.get(key)
            return max(0, (m.mod if m else 1) - 1)
        assert choice is None or isinstance(choice, int)
        return choice

    # ---------------------------------------------------------------- rules

    @rule(key=keys, value=values)
    def put(self, key: str, value: Any) -> None:
        self.apply(cmds.put(key, value, request_id=self.rid()), self.model.put(key, value, None))

    @rule(key=keys, value=values, choice=st.sampled_from(["current", "stale", 0, 1, 3, 7]))
    def cas_put(self, key: str, value: Any, choice: str | int) -> None:
        prev = self.prev_choice(key, choice)
        self.apply(cmds.put(key, value, prev_revision=prev, request_id=self.rid()), self.model.put(key, value, prev))

    @rule(key=keys)
    def delete(self, key: str) -> None:
        self.apply(cmds.delete(key, request_id=self.rid()), self.model.delete(key, None))

    @rule(key=keys, choice=st.sampled_from(["current", "stale", 0, 2, 5]))
    def cas_delete(self, key: str, choice: str | int) -> None:
        prev = self.prev_choice(key, choice)
        self.apply(cmds.delete(key, prev_revision=prev, request_id=self.rid()), self.model.delete(key, prev))

    def resolve(self, c: dict[str, Any]) -> dict[str, Any]:
        value = c["value"]
        m = self.model.data.get(c["key"])
        if c["target"] == "value":
            if isinstance(value, tuple):  # the current value
                value = None if m is None else m.value
        elif isinstance(value, tuple):
            field = {"mod_revision": "mod", "create_revision": "create", "version": "version"}[c["target"]]
            value = max(0, (0 if m is None else getattr(m, field)) + value[1])
        elif not isinstance(value, int) or isinstance(value, bool):
            value = 1
        return {**c, "value": value}

    @rule(raw_compare=st.lists(compares, max_size=3), success=branches, failure=branches)
    def txn(
        self, raw_compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> None:
        compare = [self.resolve(c) for c in raw_compare]
        command = cmds.txn(compare, success, failure, request_id=self.rid())
        self.apply(command, self.model.txn(compare, success, failure))

    @rule()
    def barrier(self) -> None:
        self.index += 1
        assert self.sm.apply(cmds.barrier(), self.index) == {
            "status": "ok",
            "revision": self.model.revision,
            "index": self.index,
        }

    @precondition(lambda self: bool(self.applied))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        command, original = data.draw(st.sampled_from(self.applied))
        self.index += 1
        # A retry gets the original decision back, without stored values (kept small).
        assert self.sm.apply(command, self.index) == {**_for_dedup(original), "duplicate": True}

    @rule()
    def snapshot_restore(self) -> None:
        snap = self.sm.snapshot()
        fresh = StateMachine(history_limit=HISTORY_LIMIT, dedup_limit=DEDUP_LIMIT)
        fresh.restore(snap)
        assert fresh.snapshot() == snap
        self.sm = fresh

    # ---------------------------------------------------------------- invariants

    @invariant()
    def check(self) -> None:
        sm, model = self.sm, self.model
        assert sm.revision == model.revision
        assert sm.applied_index == self.index
        expected = [model.data[k].as_kv(k) for k in sorted(model.data)]
        assert sm.range("") == (expected, False)
        assert len(sm) == len(expected)
        for key in KEYS:
            m = model.data.get(key)
            assert sm.get(key) == (None if m is None else m.as_kv(key))
        assert sm.range("a/")[0] == [kv for kv in expected if kv.key.startswith("a/")]
        # Paging with start_after/limit visits the same entries.
        paged: list[KeyValue] = []
        start_after = None
        for _ in range(len(expected) + 1):
            page, more = sm.range("", start_after=start_after, limit=2)
            assert len(page) <= 2
            paged += page
            if not more:
                break
            start_after = page[-1].key
        assert paged == expected
        # History: the retained tail of the model's event list.
        assert sm.compacted_revision == model.compacted
        events = sm.events_since(model.compacted + 1)
        assert [(e.revision, e.type, e.kv.key, e.kv.value) for e in events] == [
            ev for ev in model.events if ev[0] > model.compacted
        ]
        if model.compacted > 0:
            try:
                sm.events_since(model.compacted)
            except Compacted:
                pass
            else:  # pragma: no cover
                raise AssertionError("events_since at the compacted revision must raise Compacted")


StateMachineVsModel.TestCase.settings = settings(
    max_examples=150, derandomize=True, stateful_step_count=40, deadline=None
)
TestStateMachineVsModel = StateMachineVsModel.TestCase
