"""Unit tests of the pure ``rdb._state.StateMachine``.

Commands are built with ``rdb._commands`` (exactly what a proposer would put in the log)
except where a test needs a malformed command the builders refuse to produce; those are
packed by hand with ``raw()``.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdb import Compacted, Event, KeyValue, StateMachine
from rdb import _commands as cmds
from rdb._state import COMMAND_VERSION


class Node:
    """A StateMachine plus a log index counter and a request-id source."""

    def __init__(self, sm: StateMachine | None = None) -> None:
        self.sm = sm if sm is not None else StateMachine()
        self.index = self.sm.applied_index
        self._rids = itertools.count(1)

    def rid(self) -> str:
        return f"rid-{next(self._rids)}"

    def apply(self, command: bytes) -> dict[str, Any]:
        self.index += 1
        return self.sm.apply(command, self.index)

    def put(self, key: str, value: Any, prev: int | None = None, rid: str | None = None) -> dict[str, Any]:
        return self.apply(cmds.put(key, value, prev_revision=prev, request_id=rid or self.rid()))

    def delete(self, key: str, prev: int | None = None, rid: str | None = None) -> dict[str, Any]:
        return self.apply(cmds.delete(key, prev_revision=prev, request_id=rid or self.rid()))

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
        rid: str | None = None,
    ) -> dict[str, Any]:
        return self.apply(cmds.txn(compare, success, failure or [], request_id=rid or self.rid()))


def raw(**fields: Any) -> bytes:
    """A hand-packed command (bypasses the builders' validation). ``v`` defaults to current."""
    fields.setdefault("v", COMMAND_VERSION)
    return bytes(msgpack.packb(fields, use_bin_type=True))


def contents(sm: StateMachine) -> list[KeyValue]:
    entries, more = sm.range("")
    assert not more
    return entries


@pytest.fixture
def node() -> Node:
    return Node()


# =========================================================================== put / get / delete


def test_empty_machine(node: Node) -> None:
    sm = node.sm
    assert sm.revision == 0
    assert sm.applied_index == 0
    assert sm.compacted_revision == 0
    assert len(sm) == 0
    assert sm.get("a") is None
    assert sm.range("") == ([], False)
    assert sm.events_since(1) == []
    assert list(sm.items()) == []


def test_put_creates_key_with_bookkeeping(node: Node) -> None:
    assert node.put("a", {"x": 1}) == {"status": "ok", "revision": 1, "version": 1}
    assert node.sm.get("a") == KeyValue("a", {"x": 1}, create_revision=1, mod_revision=1, version=1)
    assert node.sm.revision == 1
    assert len(node.sm) == 1


def test_put_overwrite_bumps_version_and_mod_revision_only(node: Node) -> None:
    node.put("a", 1)
    node.put("b", 2)
    assert node.put("a", 3) == {"status": "ok", "revision": 3, "version": 2}
    assert node.put("a", 4) == {"status": "ok", "revision": 4, "version": 3}
    assert node.sm.get("a") == KeyValue("a", 4, create_revision=1, mod_revision=4, version=3)
    assert node.sm.get("b") == KeyValue("b", 2, create_revision=2, mod_revision=2, version=1)


def test_put_same_value_still_bumps_revision(node: Node) -> None:
    node.put("a", 1)
    assert node.put("a", 1) == {"status": "ok", "revision": 2, "version": 2}


@pytest.mark.parametrize(
    "value",
    [None, 0, -5, 2**63, 1.25, True, "", "text", b"\x00\xff", [1, [2, "x"]], {"a": {"b": [None, b"z"]}}],
)
def test_values_round_trip(node: Node, value: Any) -> None:
    node.put("k", value)
    kv = node.sm.get("k")
    assert kv is not None
    assert kv.value == value
    assert type(kv.value) is type(value)


def test_delete_existing_key(node: Node) -> None:
    node.put("a", 1)
    node.put("a", 2)
    assert node.delete("a") == {"status": "ok", "revision": 3}
    assert node.sm.get("a") is None
    assert node.sm.revision == 3
    assert len(node.sm) == 0
    assert node.sm.range("") == ([], False)


def test_delete_missing_key_is_not_found_and_does_not_bump_revision(node: Node) -> None:
    node.put("a", 1)
    assert node.delete("b") == {"status": "not_found", "revision": 1}
    assert node.sm.revision == 1
    assert [e.revision for e in node.sm.events_since(1)] == [1]
    assert node.delete("b") == {"status": "not_found", "revision": 1}


def test_recreate_after_delete_resets_create_revision_and_version(node: Node) -> None:
    node.put("a", 1)
    node.put("a", 2)
    node.delete("a")
    assert node.put("a", 3) == {"status": "ok", "revision": 4, "version": 1}
    assert node.sm.get("a") == KeyValue("a", 3, create_revision=4, mod_revision=4, version=1)


def test_kv_to_dict() -> None:
    kv = KeyValue("a", [1], 2, 3, 4)
    assert kv.to_dict() == {"key": "a", "value": [1], "create_revision": 2, "mod_revision": 3, "version": 4}


# =========================================================================== CAS


def test_cas_put_on_matching_mod_revision(node: Node) -> None:
    node.put("a", 1)
    node.put("b", 1)
    assert node.put("a", 2, prev=1) == {"status": "ok", "revision": 3, "version": 2}


def test_cas_put_on_stale_mod_revision_is_conflict_and_changes_nothing(node: Node) -> None:
    node.put("a", 1)
    node.put("a", 2)
    before = node.sm.snapshot()
    result = node.put("a", 3, prev=1)
    assert result == {
        "status": "conflict",
        "revision": 2,
        "current": {"key": "a", "value": 2, "create_revision": 1, "mod_revision": 2, "version": 2},
    }
    assert node.sm.get("a") == KeyValue("a", 2, 1, 2, 2)
    assert node.sm.revision == 2
    assert len(node.sm.events_since(1)) == 2
    assert contents(node.sm) == contents(restored(before))


def restored(snapshot: bytes, **limits: int) -> StateMachine:
    sm = StateMachine(**limits)
    sm.restore(snapshot)
    return sm


def test_cas_prev_zero_is_create_only(node: Node) -> None:
    assert node.put("a", 1, prev=0) == {"status": "ok", "revision": 1, "version": 1}
    result = node.put("a", 2, prev=0)
    assert result["status"] == "conflict"
    assert result["revision"] == 1
    assert result["current"]["mod_revision"] == 1
    assert node.sm.get("a") == KeyValue("a", 1, 1, 1, 1)


def test_cas_prev_zero_creates_again_after_delete(node: Node) -> None:
    node.put("a", 1)
    node.delete("a")
    assert node.put("a", 2, prev=0) == {"status": "ok", "revision": 3, "version": 1}


def test_cas_put_nonzero_prev_on_missing_key_is_conflict(node: Node) -> None:
    node.put("b", 1)
    assert node.put("a", 1, prev=1) == {"status": "conflict", "revision": 1, "current": None}
    assert node.sm.get("a") is None


def test_cas_delete(node: Node) -> None:
    node.put("a", 1)
    node.put("a", 2)
    result = node.delete("a", prev=1)
    assert result["status"] == "conflict"
    assert result["current"]["value"] == 2
    assert node.sm.get("a") is not None
    assert node.sm.revision == 2
    assert node.delete("a", prev=2) == {"status": "ok", "revision": 3}
    assert node.sm.get("a") is None


def test_cas_delete_on_missing_key(node: Node) -> None:
    node.put("b", 1)
    # prev=0 matches "absent", so the CAS passes and the delete finds nothing.
    assert node.delete("a", prev=0) == {"status": "not_found", "revision": 1}
    assert node.delete("a", prev=1) == {"status": "conflict", "revision": 1, "current": None}
    assert node.sm.revision == 1


# =========================================================================== barrier / applied index


def test_barrier_changes_nothing_and_reports_index(node: Node) -> None:
    node.put("a", 1)
    snap = node.sm.snapshot()
    result = node.apply(cmds.barrier())
    assert result == {"status": "ok", "revision": 1, "index": 2}
    assert node.sm.revision == 1
    assert node.sm.applied_index == 2
    # Barriers carry no request id: applying one again is not a duplicate.
    assert node.apply(cmds.barrier()) == {"status": "ok", "revision": 1, "index": 3}
    assert contents(node.sm) == contents(restored(snap))


def test_applied_index_tracks_the_highest_index() -> None:
    sm = StateMachine()
    sm.apply(cmds.put("a", 1, request_id="1"), 5)
    assert sm.applied_index == 5
    sm.apply(cmds.put("a", 2, request_id="2"), 3)  # a replayed lower index never moves it back
    assert sm.applied_index == 5
    sm.apply(b"garbage", 9)  # even an invalid entry occupies its index
    assert sm.applied_index == 9


# =========================================================================== txn


@pytest.fixture
def txn_node() -> Node:
    """Key "a": value "v2", create_revision 1, mod_revision 3, version 2; "b" padding."""
    n = Node()
    n.put("a", "v1")  # 1
    n.put("b", 0)  # 2
    n.put("a", "v2")  # 3
    n.put("b", 1)  # 4
    return n


COMPARE_CASES = [
    # target, result, value, expected
    ("mod_revision", "==", 3, True),
    ("mod_revision", "==", 4, False),
    ("mod_revision", "!=", 3, False),
    ("mod_revision", "!=", 1, True),
    ("mod_revision", "<", 4, True),
    ("mod_revision", "<", 3, False),
    ("mod_revision", ">", 2, True),
    ("mod_revision", ">", 3, False),
    ("create_revision", "==", 1, True),
    ("create_revision", "==", 3, False),
    ("create_revision", "!=", 1, False),
    ("create_revision", "<", 2, True),
    ("create_revision", "<", 1, False),
    ("create_revision", ">", 0, True),
    ("create_revision", ">", 1, False),
    ("version", "==", 2, True),
    ("version", "==", 1, False),
    ("version", "!=", 2, False),
    ("version", "!=", 0, True),
    ("version", "<", 3, True),
    ("version", "<", 2, False),
    ("version", ">", 1, True),
    ("version", ">", 2, False),
    ("value", "==", "v2", True),
    ("value", "==", "v1", False),
    ("value", "!=", "v2", False),
    ("value", "!=", "v1", True),
    ("value", "<", "v3", True),
    ("value", "<", "v2", False),
    ("value", ">", "v1", True),
    ("value", ">", "v2", False),
    ("value", "<", 5, False),  # incomparable types compare false, never raise
    ("value", ">", 5, False),
    ("value", "==", 5, False),
    ("value", "!=", 5, True),
]


@pytest.mark.parametrize(("target", "result", "value", "expected"), COMPARE_CASES)
def test_txn_compare_on_existing_key(txn_node: Node, target: str, result: str, value: Any, expected: bool) -> None:
    res = txn_node.txn(
        [{"key": "a", "target": target, "result": result, "value": value}],
        [{"op": "get", "key": "a"}],
        [],
    )
    assert res["status"] == "ok"
    assert res["succeeded"] is expected
    assert res["revision"] == 4
    if expected:
        assert res["responses"] == [{"op": "get", "kv": txn_node.sm.get("a").to_dict()}]  # type: ignore[union-attr]
    else:
        assert res["responses"] == []


MISSING_CASES = [
    ("mod_revision", "==", 0, True),
    ("create_revision", "==", 0, True),
    ("version", "==", 0, True),
    ("version", ">", 0, False),
    ("version", "<", 1, True),
    ("mod_revision", "!=", 0, False),
    ("value", "==", None, True),
    ("value", "!=", None, False),
    ("value", "==", "x", False),
    ("value", "<", "x", False),  # None < "x" is a TypeError: false
]


@pytest.mark.parametrize(("target", "result", "value", "expected"), MISSING_CASES)
def test_txn_compare_on_missing_key(txn_node: Node, target: str, result: str, value: Any, expected: bool) -> None:
    res = txn_node.txn([{"key": "zz", "target": target, "result": result, "value": value}], [], [])
    assert res["succeeded"] is expected


def test_txn_compare_defaults_to_mod_revision_equal(txn_node: Node) -> None:
    assert txn_node.txn([{"key": "a", "value": 3}], [], [])["succeeded"] is True
    assert txn_node.txn([{"key": "a", "value": 1}], [], [])["succeeded"] is False


def test_txn_compares_are_anded(txn_node: Node) -> None:
    yes = {"key": "a", "target": "version", "value": 2}
    no = {"key": "b", "target": "version", "value": 7}
    assert txn_node.txn([yes, yes], [], [])["succeeded"] is True
    assert txn_node.txn([yes, no], [], [])["succeeded"] is False
    assert txn_node.txn([no, yes], [], [])["succeeded"] is False
    assert txn_node.txn([], [], [])["succeeded"] is True  # no compare: success


def test_txn_success_branch_writes_at_one_revision(txn_node: Node) -> None:
    res = txn_node.txn(
        [{"key": "a", "target": "value", "value": "v2"}],
        [
            {"op": "put", "key": "a", "value": "v3"},
            {"op": "put", "key": "c", "value": "new"},
            {"op": "delete", "key": "b"},
            {"op": "delete", "key": "nope"},
            {"op": "get", "key": "a"},
        ],
        [{"op": "put", "key": "never", "value": 1}],
    )
    assert res == {
        "status": "ok",
        "succeeded": True,
        "revision": 5,
        "responses": [
            {"op": "put", "revision": 5},
            {"op": "put", "revision": 5},
            {"op": "delete", "deleted": True},
            {"op": "delete", "deleted": False},
            {"op": "get", "kv": {"key": "a", "value": "v3", "create_revision": 1, "mod_revision": 5, "version": 3}},
        ],
    }
    sm = txn_node.sm
    assert sm.revision == 5
    assert sm.get("a") == KeyValue("a", "v3", 1, 5, 3)
    assert sm.get("c") == KeyValue("c", "new", 5, 5, 1)
    assert sm.get("b") is None
    assert sm.get("never") is None
    events = sm.events_since(5)
    assert [(e.revision, e.type, e.kv.key) for e in events] == [(5, "put", "a"), (5, "put", "c"), (5, "delete", "b")]


def test_txn_failure_branch(txn_node: Node) -> None:
    res = txn_node.txn(
        [{"key": "a", "target": "mod_revision", "value": 1}],
        [{"op": "put", "key": "a", "value": "nope"}],
        [{"op": "get", "key": "a"}, {"op": "put", "key": "b", "value": 99}],
    )
    assert res["succeeded"] is False
    assert res["revision"] == 5
    assert res["responses"][0] == {"op": "get", "kv": txn_node.sm.get("a").to_dict()}  # type: ignore[union-attr]
    assert res["responses"][1] == {"op": "put", "revision": 5}
    assert txn_node.sm.get("a").value == "v2"  # type: ignore[union-attr]
    assert txn_node.sm.get("b") == KeyValue("b", 99, 2, 5, 3)


def test_txn_get_sees_earlier_writes_of_the_same_branch(txn_node: Node) -> None:
    res = txn_node.txn(
        [], [{"op": "get", "key": "a"}, {"op": "put", "key": "a", "value": "n"}, {"op": "get", "key": "a"}]
    )
    assert res["responses"][0]["kv"]["value"] == "v2"
    assert res["responses"][2]["kv"]["value"] == "n"


def test_txn_without_writes_keeps_revision(txn_node: Node) -> None:
    res = txn_node.txn([], [{"op": "get", "key": "a"}, {"op": "delete", "key": "missing"}])
    assert res["revision"] == 4
    assert res["responses"][1] == {"op": "delete", "deleted": False}
    assert txn_node.sm.revision == 4
    assert txn_node.sm.events_since(5) == []


def test_txn_delete_only_bumps_revision(txn_node: Node) -> None:
    res = txn_node.txn([], [], [{"op": "delete", "key": "b"}])
    assert res["succeeded"] is True  # empty compare list: the (empty) success branch runs
    assert res["revision"] == 4
    res = txn_node.txn([], [{"op": "delete", "key": "b"}])
    assert res["revision"] == 5
    assert txn_node.sm.revision == 5


# --------------------------------------------------------------------------- txn atomicity

PUT_X = {"op": "put", "key": "x", "value": 1}


@pytest.mark.parametrize(
    "command",
    [
        # invalid op after a valid write in the running branch
        {"kind": "txn", "compare": [], "success": [PUT_X, {"op": "scan", "key": "y"}], "failure": []},
        {"kind": "txn", "compare": [], "success": [PUT_X, {"op": "put", "key": ""}], "failure": []},
        {"kind": "txn", "compare": [], "success": [PUT_X, {"op": "put", "key": 7}], "failure": []},
        {"kind": "txn", "compare": [], "success": [PUT_X, "put"], "failure": []},
        # invalid op in the branch that would not run
        {"kind": "txn", "compare": [], "success": [PUT_X], "failure": [{"op": "nope", "key": "y"}]},
        {"kind": "txn", "compare": [{"key": "a", "value": 999}], "success": [{"op": "?"}], "failure": [PUT_X]},
        # invalid compares
        {"kind": "txn", "compare": [{"key": "a", "target": "lease"}], "success": [PUT_X], "failure": [PUT_X]},
        {"kind": "txn", "compare": [{"key": "a", "result": "<="}], "success": [PUT_X], "failure": [PUT_X]},
        {"kind": "txn", "compare": [{"key": ""}], "success": [PUT_X], "failure": [PUT_X]},
        {"kind": "txn", "compare": ["a"], "success": [PUT_X], "failure": [PUT_X]},
        # an invalid compare *after* a false one must still reject the txn
        {
            "kind": "txn",
            "compare": [{"key": "a", "value": 999}, {"key": "a", "target": "bogus"}],
            "success": [PUT_X],
            "failure": [PUT_X],
        },
        {
            "kind": "txn",
            "compare": [{"key": "a", "value": 999}, {"key": None}],
            "success": [PUT_X],
            "failure": [PUT_X],
        },
        # malformed parts
        {"kind": "txn", "compare": {}, "success": [PUT_X], "failure": []},
        {"kind": "txn", "compare": [], "success": PUT_X, "failure": []},
        {"kind": "txn", "compare": [], "success": [PUT_X], "failure": None},
    ],
)
def test_invalid_txn_applies_nothing(txn_node: Node, command: dict[str, Any]) -> None:
    before = txn_node.sm.snapshot()
    revision = txn_node.sm.revision
    result = txn_node.apply(raw(rid="bad", **command))
    assert result["status"] == "invalid"
    assert isinstance(result["message"], str)
    assert txn_node.sm.revision == revision
    assert txn_node.sm.get("x") is None
    assert contents(txn_node.sm) == contents(restored(before))
    assert txn_node.sm.events_since(revision + 1) == []


# =========================================================================== range


@pytest.fixture
def range_node() -> Node:
    n = Node()
    for key in ["b/1", "a/3", "a/1", "ab", "a/2", "a", "a/10", "c", "a0"]:
        n.put(key, key.upper())
    return n


def keys(entries: list[KeyValue]) -> list[str]:
    return [kv.key for kv in entries]


def test_range_all_in_key_order(range_node: Node) -> None:
    entries, more = range_node.sm.range("")
    assert keys(entries) == ["a", "a/1", "a/10", "a/2", "a/3", "a0", "ab", "b/1", "c"]
    assert more is False
    assert all(kv.value == kv.key.upper() for kv in entries)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a/", ["a/1", "a/10", "a/2", "a/3"]),
        ("a/1", ["a/1", "a/10"]),
        ("a", ["a", "a/1", "a/10", "a/2", "a/3", "a0", "ab"]),
        ("b", ["b/1"]),
        ("c", ["c"]),
        ("d", []),
        ("0", []),
        ("a/10/", []),
    ],
)
def test_range_by_prefix(range_node: Node, prefix: str, expected: list[str]) -> None:
    assert range_node.sm.range(prefix) == ([range_node.sm.get(k) for k in expected], False)


def test_range_limit(range_node: Node) -> None:
    entries, more = range_node.sm.range("a/", limit=2)
    assert keys(entries) == ["a/1", "a/10"]
    assert more is True
    entries, more = range_node.sm.range("a/", limit=4)
    assert keys(entries) == ["a/1", "a/10", "a/2", "a/3"]
    assert more is False  # exactly the limit, nothing cut
    entries, more = range_node.sm.range("a/", limit=100)
    assert more is False
    entries, more = range_node.sm.range("zzz", limit=0)
    assert (entries, more) == ([], False)


@pytest.mark.parametrize("prefix", ["", "a", "a/", "b"])
@pytest.mark.parametrize("limit", [1, 2, 3])
def test_range_paging_visits_every_key_once(range_node: Node, prefix: str, limit: int) -> None:
    expected = keys(range_node.sm.range(prefix)[0])
    seen: list[str] = []
    start_after = None
    max_pages = len(expected) // limit + 1
    for _ in range(max_pages):
        page, more = range_node.sm.range(prefix, start_after=start_after, limit=limit)
        assert len(page) <= limit
        seen += keys(page)
        if not more:
            break
        start_after = page[-1].key
    else:
        raise AssertionError(f"paging did not finish in {max_pages} pages: {seen}")
    assert seen == expected


def test_range_start_after(range_node: Node) -> None:
    sm = range_node.sm
    assert keys(sm.range("a/", start_after="a/10")[0]) == ["a/2", "a/3"]
    assert keys(sm.range("a/", start_after="a/1")[0]) == ["a/10", "a/2", "a/3"]
    assert keys(sm.range("a/", start_after="a/0")[0]) == ["a/1", "a/10", "a/2", "a/3"]  # not a key
    assert keys(sm.range("a/", start_after="a/3")[0]) == []
    assert keys(sm.range("a/", start_after="a")[0]) == ["a/1", "a/10", "a/2", "a/3"]  # before the prefix
    assert keys(sm.range("a/", start_after="")[0]) == ["a/1", "a/10", "a/2", "a/3"]
    assert keys(sm.range("a/", start_after="b")[0]) == []  # after the prefix
    assert keys(sm.range("", start_after="ab")[0]) == ["b/1", "c"]


def test_range_reflects_deletes(range_node: Node) -> None:
    range_node.delete("a/10")
    range_node.delete("a")
    assert keys(range_node.sm.range("a")[0]) == ["a/1", "a/2", "a/3", "a0", "ab"]
    range_node.put("a/10", 1)
    assert keys(range_node.sm.range("a/")[0]) == ["a/1", "a/10", "a/2", "a/3"]


# =========================================================================== events


def test_events_since_ordering_and_content(node: Node) -> None:
    node.put("a", 1)  # 1
    node.put("b/x", 2)  # 2
    node.put("a", 3)  # 3
    node.delete("a")  # 4
    node.delete("zz")  # not found: no event
    node.put("b/y", 4)  # 5
    events = node.sm.events_since(1)
    assert [(e.revision, e.type, e.kv.key) for e in events] == [
        (1, "put", "a"),
        (2, "put", "b/x"),
        (3, "put", "a"),
        (4, "delete", "a"),
        (5, "put", "b/y"),
    ]
    assert events[0].prev_kv is None
    assert events[2].kv == KeyValue("a", 3, 1, 3, 2)
    assert events[2].prev_kv == KeyValue("a", 1, 1, 1, 1)
    delete = events[3]
    assert delete.kv == KeyValue("a", None, 1, 4, 0)
    assert delete.prev_kv == KeyValue("a", 3, 1, 3, 2)
    assert delete.to_dict() == {
        "revision": 4,
        "type": "delete",
        "kv": {"key": "a", "value": None, "create_revision": 1, "mod_revision": 4, "version": 0},
        "prev_kv": {"key": "a", "value": 3, "create_revision": 1, "mod_revision": 3, "version": 2},
    }
    assert events[0].to_dict()["prev_kv"] is None
    assert all(isinstance(e, Event) for e in events)
    assert [e.revision for e in node.sm.events_since(3)] == [3, 4, 5]
    assert [e.kv.key for e in node.sm.events_since(1, prefix="b/")] == ["b/x", "b/y"]
    assert [e.kv.key for e in node.sm.events_since(3, prefix="a")] == ["a", "a"]
    assert node.sm.events_since(6) == []
    assert node.sm.events_since(100) == []


def test_history_limit_evicts_and_raises_compacted() -> None:
    node = Node(StateMachine(history_limit=3))
    for i in range(5):
        node.put(f"k{i}", i)  # revisions 1..5
    sm = node.sm
    assert sm.compacted_revision == 2
    assert [e.revision for e in sm.events_since(3)] == [3, 4, 5]
    for old in (1, 2):
        with pytest.raises(Compacted) as info:
            sm.events_since(old)
        assert info.value.requested == old
        assert info.value.compacted == 2
    assert sm.events_since(6) == []  # the future is never compacted


def test_history_compaction_inside_one_txn_revision() -> None:
    node = Node(StateMachine(history_limit=2))
    node.txn([], [{"op": "put", "key": k, "value": 1} for k in "abc"])  # revision 1, three events
    sm = node.sm
    # Part of revision 1 is gone, so the whole revision counts as compacted.
    assert sm.compacted_revision == 1
    with pytest.raises(Compacted):
        sm.events_since(1)
    node.put("d", 1)
    assert [e.kv.key for e in sm.events_since(2)] == ["d"]


def test_history_byte_limit_evicts_but_keeps_the_newest() -> None:
    node = Node(StateMachine(history_bytes=1000))
    node.put("a", b"x" * 600)
    node.put("b", b"x" * 600)
    sm = node.sm
    assert sm.compacted_revision == 1
    assert [e.revision for e in sm.events_since(2)] == [2]
    node.put("c", b"x" * 5000)  # a single event over the cap is still kept
    assert [e.revision for e in sm.events_since(3)] == [3]
    assert sm.compacted_revision == 2


def test_long_history_trimming_stays_consistent() -> None:
    node = Node(StateMachine(history_limit=10))
    for i in range(3000):
        node.put(f"k{i % 7}", i)
    sm = node.sm
    assert sm.compacted_revision == 2990
    events = sm.events_since(2991)
    assert [e.revision for e in events] == list(range(2991, 3001))
    assert [e.kv.value for e in events] == list(range(2990, 3000))
    with pytest.raises(Compacted):
        sm.events_since(2990)
    copy = restored(sm.snapshot())
    assert copy.events_since(2991) == events


# =========================================================================== snapshot / restore


def build_rich_state(history_limit: int = 10_000) -> Node:
    node = Node(StateMachine(history_limit=history_limit))
    node.put("cfg/a", {"x": [1, 2]})
    node.put("cfg/b", b"\x00bin")
    node.put("cfg/a", "second")
    node.delete("cfg/b")
    node.delete("cfg/missing")
    node.put("cfg/c", 1, prev=5)  # conflict, cached in dedup
    node.txn([{"key": "cfg/a", "target": "version", "value": 2}], [{"op": "put", "key": "t", "value": None}])
    node.apply(raw(rid="bad-one", kind="explode"))  # invalid, cached in dedup
    node.apply(cmds.barrier())
    node.put("zz", 2**40)
    return node


def assert_same_state(a: StateMachine, b: StateMachine) -> None:
    assert a.revision == b.revision
    assert a.applied_index == b.applied_index
    assert a.compacted_revision == b.compacted_revision
    assert len(a) == len(b)
    assert a.range("") == b.range("")
    start = a.compacted_revision + 1
    assert a.events_since(start) == b.events_since(start)
    assert a.snapshot() == b.snapshot()


def test_snapshot_restore_round_trip() -> None:
    node = build_rich_state()
    copy = restored(node.sm.snapshot())
    assert_same_state(node.sm, copy)
    assert copy.get("cfg/a") == KeyValue("cfg/a", "second", 1, 3, 2)
    assert [e.revision for e in copy.events_since(1)] == [1, 2, 3, 4, 5, 6]


def test_snapshot_restore_round_trip_with_compacted_history() -> None:
    node = build_rich_state(history_limit=3)
    copy = StateMachine(history_limit=3)
    copy.restore(node.sm.snapshot())
    assert copy.compacted_revision == node.sm.compacted_revision > 0
    assert_same_state(node.sm, copy)
    with pytest.raises(Compacted):
        copy.events_since(1)


def test_restored_machine_continues_identically() -> None:
    node = build_rich_state()
    twin = Node(restored(node.sm.snapshot()))
    twin._rids = itertools.count(1000)
    node._rids = itertools.count(1000)
    for n in (node, twin):
        n.put("cfg/a", 9, prev=3)
        n.delete("zz")
        n.txn([{"key": "t", "target": "value", "value": None}], [{"op": "delete", "key": "t"}])
        n.put("new", 1)
    assert_same_state(node.sm, twin.sm)


def test_restore_preserves_dedup() -> None:
    node = build_rich_state()
    copy = Node(restored(node.sm.snapshot()))
    copy.index = node.index
    # rid-1 was the very first put; replaying it on the restored copy is a duplicate.
    first = copy.apply(cmds.put("cfg/a", {"x": [1, 2]}, request_id="rid-1"))
    assert first == {"status": "ok", "revision": 1, "version": 1, "duplicate": True}
    conflict = copy.apply(cmds.put("cfg/c", 1, prev_revision=5, request_id="rid-6"))
    assert conflict["status"] == "conflict"
    assert conflict["duplicate"] is True
    invalid = copy.apply(raw(rid="bad-one", kind="explode"))
    assert invalid["status"] == "invalid"
    assert invalid["duplicate"] is True
    assert copy.sm.revision == node.sm.revision
    assert copy.sm.get("cfg/a") == node.sm.get("cfg/a")


def test_restore_replaces_existing_state() -> None:
    source = build_rich_state()
    target = Node()
    target.put("other", 1)
    target.put("cfg/a", "will be replaced")
    target.sm.restore(source.sm.snapshot())
    assert_same_state(source.sm, target.sm)
    assert target.sm.get("other") is None


def test_restore_of_empty_snapshot_empties_the_machine() -> None:
    node = build_rich_state()
    node.sm.restore(StateMachine().snapshot())
    assert_same_state(node.sm, StateMachine())


def _valid_doc() -> dict[str, Any]:
    doc = msgpack.unpackb(build_rich_state().sm.snapshot(), raw=False, strict_map_key=False)
    assert isinstance(doc, dict)
    return doc


def _doc_with(**changes: Any) -> bytes:
    doc = _valid_doc()
    for k, v in changes.items():
        if v is _MISSING:
            del doc[k]
        else:
            doc[k] = v
    return bytes(msgpack.packb(doc, use_bin_type=True))


_MISSING = object()

GOOD_SNAPSHOT = build_rich_state().sm.snapshot()

GARBAGE_SNAPSHOTS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x01", id="msgpack-int"),
    pytest.param(b"\xc1", id="reserved-byte"),
    pytest.param(b"not msgpack at all \xff\xfe", id="text"),
    pytest.param(msgpack.packb([1, 2, 3]), id="list"),
    pytest.param(msgpack.packb("snapshot"), id="str"),
    pytest.param(msgpack.packb(None), id="nil"),
    pytest.param(msgpack.packb({}), id="empty-map"),
    pytest.param(GOOD_SNAPSHOT[: len(GOOD_SNAPSHOT) // 2], id="truncated"),
    pytest.param(GOOD_SNAPSHOT + b"\x00", id="trailing-bytes"),
    pytest.param(_doc_with(format=2), id="future-format"),
    pytest.param(_doc_with(format=None), id="no-format-value"),
    pytest.param(_doc_with(kvs=_MISSING), id="no-kvs"),
    pytest.param(_doc_with(history=_MISSING), id="no-history"),
    pytest.param(_doc_with(dedup=_MISSING), id="no-dedup"),
    pytest.param(_doc_with(revision=_MISSING), id="no-revision"),
    pytest.param(_doc_with(revision="abc"), id="bad-revision"),
    pytest.param(_doc_with(applied_index=None), id="bad-applied-index"),
    pytest.param(_doc_with(kvs=[["a", 1, 1, 1]]), id="short-kv-row"),
    pytest.param(_doc_with(kvs=[[["list-key"], 1, 1, 1, 1]]), id="unhashable-key"),
    pytest.param(_doc_with(kvs=[[1, 1, 1, 1, 1], ["a", 1, 1, 1, 1]]), id="mixed-key-types"),
    pytest.param(_doc_with(kvs=[[7, 1, 1, 1, 1]]), id="int-key"),
    pytest.param(_doc_with(kvs=[["", 1, 1, 1, 1]]), id="empty-key"),
    pytest.param(_doc_with(kvs=5), id="kvs-not-list"),
    pytest.param(_doc_with(history=[[1, "put"]]), id="short-history-row"),
    pytest.param(_doc_with(history=[[1, "put", ["a", 1, 1, 1], None]]), id="short-history-kv"),
    pytest.param(_doc_with(dedup=[["rid"]]), id="bad-dedup-row"),
    pytest.param(_doc_with(dedup=[[["unhashable"], {}]]), id="unhashable-rid"),
    pytest.param(None, id="None"),
    pytest.param("a string", id="python-str"),
    pytest.param(12, id="python-int"),
]


@pytest.mark.parametrize("garbage", GARBAGE_SNAPSHOTS)
def test_restore_of_garbage_raises_value_error_and_keeps_state(garbage: Any) -> None:
    node = build_rich_state()
    before = node.sm.snapshot()
    reference = restored(before)
    with pytest.raises(ValueError):
        node.sm.restore(garbage)
    assert node.sm.snapshot() == before
    assert_same_state(node.sm, reference)
    # and the machine still works
    assert node.put("after", 1)["status"] == "ok"


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_restore_of_random_bytes_never_corrupts(data: bytes) -> None:
    sm = restored(GOOD_SNAPSHOT)
    try:
        sm.restore(data)
    except ValueError:
        assert sm.snapshot() == GOOD_SNAPSHOT
    else:  # pragma: no cover - random bytes are practically never a valid snapshot
        sm.snapshot()


@settings(max_examples=200, derandomize=True, deadline=None)
@given(pos=st.integers(min_value=0, max_value=len(GOOD_SNAPSHOT) - 1), byte=st.integers(0, 255))
def test_restore_of_a_corrupted_snapshot_never_raises_anything_but_value_error(pos: int, byte: int) -> None:
    data = bytearray(GOOD_SNAPSHOT)
    data[pos] = byte
    sm = StateMachine()
    try:
        sm.restore(bytes(data))
    except ValueError:
        assert sm.revision == 0
        assert len(sm) == 0
    else:
        # A flip inside a value can still be a valid snapshot; it must be self-consistent.
        assert sm.range("")[0] == sorted(sm.items(), key=lambda kv: kv.key)
        restored(sm.snapshot())


# =========================================================================== request-id dedup


def test_same_request_id_applies_once(node: Node) -> None:
    first = node.put("a", 1, rid="X")
    assert first == {"status": "ok", "revision": 1, "version": 1}
    snap = node.sm.snapshot()
    again = node.put("a", 1, rid="X")
    assert again == {**first, "duplicate": True}
    assert node.sm.revision == 1
    assert node.sm.get("a") == KeyValue("a", 1, 1, 1, 1)
    assert node.sm.events_since(1) == restored(snap).events_since(1)
    # The original result stays unmarked.
    assert "duplicate" not in node.put("b", 1, rid="Y")


def test_dedup_is_by_request_id_and_checks_the_content(node: Node) -> None:
    node.put("a", 1, rid="X")
    # Same rid, different command: refused (not passed off as the original), nothing applied.
    assert node.put("a", 2, rid="X") == {
        "status": "idempotency_conflict",
        "message": "request id 'X' was already used for a different request",
        "revision": 1,
    }
    assert node.delete("a", rid="X")["status"] == "idempotency_conflict"
    assert node.sm.get("a").value == 1  # type: ignore[union-attr]
    # Same content, new rid: applied again.
    assert node.put("a", 1, rid="Z") == {"status": "ok", "revision": 2, "version": 2}


def test_dedup_replays_conflicts_and_not_found(node: Node) -> None:
    node.put("a", 1)
    conflict = node.put("a", 2, prev=0, rid="C")
    assert conflict["status"] == "conflict"
    node.delete("a")
    # The retry would succeed now, but the command was already decided.
    replay = node.put("a", 2, prev=0, rid="C")
    # The same decision, without the stored value (a retry cache of 1 MiB values would be costly).
    assert replay["status"] == "conflict" and replay["duplicate"] and replay["values_trimmed"]
    assert replay["current"] == {k: v for k, v in conflict["current"].items() if k != "value"}
    assert node.sm.get("a") is None
    missing = node.delete("b", rid="D")
    node.put("b", 1)
    assert node.delete("b", rid="D") == {**missing, "duplicate": True}
    assert node.sm.get("b") is not None


def test_dedup_of_txn(node: Node) -> None:
    node.put("n", 0)
    inc = cmds.txn(
        [{"key": "n", "target": "value", "value": 0}],
        [{"op": "put", "key": "n", "value": 1}],
        [{"op": "get", "key": "n"}],
        request_id="T",
    )
    first = node.apply(inc)
    assert first["succeeded"] is True
    second = node.apply(inc)
    assert second == {**first, "duplicate": True}
    assert node.sm.get("n") == KeyValue("n", 1, 1, 2, 2)


def test_dedup_limit_forgets_oldest() -> None:
    node = Node(StateMachine(dedup_limit=2))
    node.put("a", 1, rid="A")
    node.put("b", 1, rid="B")
    node.put("c", 1, rid="C")
    assert node.put("c", 1, rid="C")["duplicate"] is True
    assert node.put("b", 1, rid="B")["duplicate"] is True
    assert "duplicate" not in node.put("a", 1, rid="A")  # forgotten: applied again
    assert node.sm.get("a") == KeyValue("a", 1, 1, 4, 2)


def test_result_returned_to_caller_does_not_alias_a_duplicate(node: Node) -> None:
    node.put("a", 1, rid="X")
    dup = node.put("a", 1, rid="X")
    dup["status"] = "tampered"
    assert node.put("a", 1, rid="X")["status"] == "ok"


# =========================================================================== apply never raises

BAD_COMMANDS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="reserved-byte"),
    pytest.param(b"\x92\x01", id="truncated-array"),
    pytest.param(b"\xff" * 10, id="ff"),
    pytest.param(msgpack.packb([1, 2]), id="list"),
    pytest.param(msgpack.packb("put"), id="str"),
    pytest.param(msgpack.packb(None), id="nil"),
    pytest.param(msgpack.packb({"kind": "put", "key": "a", "value": 1}), id="no-version"),
    pytest.param(raw(v=0, kind="put", key="a", value=1), id="version-0"),
    pytest.param(raw(v=2, kind="put", key="a", value=1), id="version-2"),
    pytest.param(raw(v="1", kind="put", key="a", value=1), id="version-str"),
    pytest.param(raw(kind="drop_table"), id="unknown-kind"),
    pytest.param(raw(kind=None), id="no-kind"),
    pytest.param(raw(kind=["put"]), id="list-kind"),
    pytest.param(raw(kind="put"), id="put-no-key"),
    pytest.param(raw(kind="put", key=""), id="put-empty-key"),
    pytest.param(raw(kind="put", key=5, value=1), id="put-int-key"),
    pytest.param(raw(kind="put", key="a", value=1, prev_revision=-1), id="put-negative-prev"),
    pytest.param(raw(kind="put", key="a", value=1, prev_revision="1"), id="put-str-prev"),
    pytest.param(raw(kind="put", key="a", value=1, prev_revision=True), id="put-bool-prev"),
    pytest.param(raw(kind="delete", key=None), id="delete-no-key"),
    pytest.param(raw(kind="delete", key="a", prev_revision=1.5), id="delete-float-prev"),
    pytest.param(raw(kind="txn", compare="x"), id="txn-bad-compare"),
    pytest.param(raw(kind="txn", success=[{"op": "put"}]), id="txn-op-no-key"),
    pytest.param(b"\x82\x01\x02\x03\x04", id="int-keyed-map"),
]


@pytest.mark.parametrize("command", BAD_COMMANDS)
def test_apply_never_raises_on_bad_commands(command: bytes) -> None:
    node = build_rich_state()
    before = node.sm.snapshot()
    result = node.apply(command)
    assert result["status"] == "invalid"
    assert isinstance(result["message"], str) and result["message"]
    assert not result["message"].startswith("internal error")
    assert contents(node.sm) == contents(restored(before))
    assert node.sm.revision == restored(before).revision


def test_invalid_result_with_rid_is_deduplicated(node: Node) -> None:
    bad = raw(rid="R", kind="put", key="")
    first = node.apply(bad)
    assert first["status"] == "invalid"
    assert node.apply(bad) == {**first, "duplicate": True}


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.sampled_from(["put", "delete", "txn", "barrier", "get", "key", "value", "a", "b", "mod_revision", "=="]),
)
_msgpack_values = st.recursive(
    _leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(["op", "key", "value", "target", "result", "a"]), children, max_size=4),
    ),
    max_leaves=12,
)
_fuzz_commands = st.fixed_dictionaries(
    {"v": st.sampled_from([COMMAND_VERSION, COMMAND_VERSION, 0, None])},
    optional={
        "kind": st.sampled_from(["put", "delete", "txn", "barrier", "other"]) | _msgpack_values,
        "rid": st.sampled_from(["r1", "r2"]) | _msgpack_values,
        "key": st.sampled_from(["a", "b", ""]) | _msgpack_values,
        "value": _msgpack_values,
        "prev_revision": st.none() | st.integers(-2, 5) | _msgpack_values,
        "compare": st.lists(_msgpack_values, max_size=3) | _msgpack_values,
        "success": st.lists(_msgpack_values, max_size=3) | _msgpack_values,
        "failure": st.lists(_msgpack_values, max_size=3) | _msgpack_values,
    },
)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(_fuzz_commands, min_size=1, max_size=6))
def test_apply_never_raises_on_fuzzed_commands(commands: list[dict[str, Any]]) -> None:
    node = Node()
    node.put("a", 1)
    for doc in commands:
        result = node.apply(bytes(msgpack.packb(doc, use_bin_type=True)))
        assert isinstance(result, dict)
        assert result["status"] in {"ok", "invalid", "conflict", "not_found", "idempotency_conflict"}
        if result["status"] == "invalid":
            assert not result["message"].startswith("internal error"), result
    # Whatever got applied, the state is consistent and serialisable.
    copy = restored(node.sm.snapshot())
    assert_same_state(node.sm, copy)
    assert node.sm.range("")[0] == sorted(node.sm.items(), key=lambda kv: kv.key)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(data=st.binary(max_size=64))
def test_apply_never_raises_on_random_bytes(data: bytes) -> None:
    node = Node()
    result = node.apply(data)
    assert isinstance(result, dict)
    assert result["status"] in {"ok", "invalid", "conflict", "not_found"}


# =========================================================================== request ids


def test_a_request_id_reused_for_a_different_request_is_refused_and_changes_nothing() -> None:
    node = Node()
    assert node.put("k", {"a": 1, "b": [1, 2]}, rid="r")["status"] == "ok"
    before = node.sm.snapshot()
    for other in (
        cmds.put("k", {"a": 2, "b": [1, 2]}, request_id="r"),  # another value
        cmds.put("k2", {"a": 1, "b": [1, 2]}, request_id="r"),  # another key
        cmds.delete("k", request_id="r"),  # another operation
    ):
        result = node.apply(other)
        assert result["status"] == "idempotency_conflict" and "'r'" in result["message"]
    after = restored(node.sm.snapshot())
    assert after.revision == restored(before).revision == 1
    assert list(after.items()) == list(restored(before).items())


def test_the_same_request_again_is_a_duplicate_and_a_look_alike_is_not() -> None:
    node = Node()
    first = node.put("k", {"a": 1, "b": {"c": 2, "d": 3}}, rid="r")
    assert node.put("k", {"a": 1, "b": {"c": 2, "d": 3}}, rid="r") == {**first, "duplicate": True}
    # A list and a map with the same items are different requests.
    assert node.put("k", [["a", 1], ["b", {"c": 2, "d": 3}]], rid="r")["status"] == "idempotency_conflict"


def test_an_entry_kept_without_a_digest_answers_with_the_original_result() -> None:
    node = Node()
    node.apply(raw(rid="old", kind="put", key="k", value=1))  # an older proposer: no "dg"
    assert node.put("k", 2, rid="old")["duplicate"] is True
    assert node.sm.get("k").value == 1  # type: ignore[union-attr]


def test_request_digests_survive_a_snapshot() -> None:
    node = Node()
    node.put("k", 1, rid="r")
    copy = Node(restored(node.sm.snapshot()))
    copy.index = node.index
    assert copy.put("k", 1, rid="r")["duplicate"] is True
    assert copy.put("k", 2, rid="r")["status"] == "idempotency_conflict"


# =========================================================================== chunked restore commands


def _restore_via_log(node: Node, snapshot: bytes, upload: str = "up-1") -> list[dict[str, Any]]:
    return [node.apply(c) for c in cmds.restore_commands(snapshot, upload)]


@pytest.mark.parametrize("big", [False, True])
def test_restore_commands_replace_state_with_a_new_revision(big: bool) -> None:
    source = build_rich_state()
    if big:  # several chunks
        source.put("blob", b"x" * (cmds.RESTORE_CHUNK_BYTES * 2 + 17))
    snapshot = source.sm.snapshot()
    target = Node()
    for i in range(20):
        target.put(f"old{i}", i)
    results = _restore_via_log(target, snapshot)
    chunks = -(-len(snapshot) // cmds.RESTORE_CHUNK_BYTES)
    assert chunks > 2 if big else chunks == 1
    assert len(results) == 2 + chunks
    assert all(r["status"] == "ok" for r in results)
    sm = target.sm
    revision = max(20, source.sm.revision) + 1
    assert results[-1] == {"status": "ok", "revision": revision, "restored_keys": len(source.sm)}
    assert sm.revision == revision
    assert sm.applied_index == target.index  # the commit entry's index, not reset
    assert [kv.key for kv in contents(sm)] == [kv.key for kv in contents(source.sm)]
    assert [kv.value for kv in contents(sm)] == [kv.value for kv in contents(source.sm)]
    assert sm.get("old0") is None
    # Watch history restarts at the restore.
    assert sm.compacted_revision == revision
    with pytest.raises(Compacted):
        sm.events_since(revision)
    assert sm.events_since(revision + 1) == []
    # The target's own request ids are kept: its retries stay deduplicated.
    assert target.put("old0", 0, rid="rid-1")["duplicate"] is True
    assert target.put("next", 1)["revision"] == revision + 1


def test_restore_commit_of_garbage_changes_nothing(node: Node) -> None:
    node.put("a", 1)
    before = node.sm.snapshot()
    results = _restore_via_log(node, b"not a snapshot")
    assert results[-1]["status"] == "invalid"
    assert contents(node.sm) == contents(restored(before))
    assert node.sm.revision == 1


def test_restore_chunks_must_follow_their_upload(node: Node) -> None:
    node.put("a", 1)
    snapshot = build_rich_state().sm.snapshot()
    _begin, chunk, commit = cmds.restore_commands(snapshot, "u1")
    assert node.apply(chunk)["status"] == "invalid"  # no upload in progress
    assert node.apply(commit)["status"] == "invalid"
    other_begin = cmds.restore_commands(snapshot, "u2")[0]
    assert node.apply(other_begin)["status"] == "ok"
    assert node.apply(chunk)["status"] == "invalid"  # chunk of another upload
    assert node.sm.get("a") is not None
    assert node.sm.revision == 1


def test_restore_upload_in_progress_survives_snapshot() -> None:
    node = Node()
    node.put("a", 1)
    snapshot = build_rich_state().sm.snapshot()
    begin, chunk, commit = cmds.restore_commands(snapshot, "u")
    node.apply(begin)
    node.apply(chunk)
    twin = Node(restored(node.sm.snapshot()))
    twin._rids = itertools.count(500)
    assert twin.apply(commit)["status"] == "ok"
    assert twin.sm.get("cfg/a") is not None
    assert twin.sm.get("a") is None


# =========================================================================== hostile snapshots


def _snapshot_doc(kvs: list[Any], revision: int = 5) -> dict[str, Any]:
    doc = msgpack.unpackb(StateMachine().snapshot(), raw=False)
    doc.update(revision=revision, kvs=kvs)
    return doc


@pytest.mark.parametrize(
    ("kvs", "revision", "message"),
    [
        ([["x/r", 1, "x", 1, 1]], 5, "must be integers"),  # found by fuzzing the HTTP API
        ([["x/r", 1, True, 1, 1]], 5, "must be integers"),
        ([["x/r", 1, 3, 2, 1]], 5, "out of range"),  # created after its last change
        ([["x/r", 1, 1, 9, 1]], 5, "out of range"),  # changed after the snapshot's revision
        ([["x/r", 1, 1, 1, 0]], 5, "out of range"),
        ([["k\x00", 1, 1, 1, 1]], 5, "bad key"),
        ([["k" * 1025, 1, 1, 1, 1]], 5, "bad key"),
        ([["", 1, 1, 1, 1]], 5, "bad key"),
        ([["a", 1, 1, 1, 1], ["a", 2, 1, 1, 1]], 5, "appears twice"),
        ([["a", 1, 1, 1]], 5, "5 fields"),
        ([], 2**64 - 1, "out of range"),
        ([], float("inf"), "must be integers"),  # found by review: an OverflowError got through
    ],
)
def test_a_malformed_snapshot_is_refused_and_changes_nothing(kvs: list[Any], revision: int, message: str) -> None:
    node = build_rich_state()
    before = node.sm.snapshot()
    with pytest.raises(ValueError, match=message):
        node.sm.restore(msgpack.packb(_snapshot_doc(kvs, revision), use_bin_type=True))
    assert node.sm.snapshot() == before


def test_a_restore_through_the_log_that_fails_late_changes_nothing() -> None:
    # The bytes pass the outline check; the row fails when the commit builds the state.
    node = build_rich_state()
    revision, data = node.sm.revision, [(kv.key, kv.value) for kv in node.sm.items()]
    bad = msgpack.packb(_snapshot_doc([["x/r", 1, "x", 1, 1]]), use_bin_type=True)
    results = [node.apply(c) for c in cmds.restore_commands(bad, "up-bad")]
    assert results[-1]["status"] == "invalid"
    assert node.sm.revision == revision and [(kv.key, kv.value) for kv in node.sm.items()] == data
    assert node.put("after", 1)["revision"] == revision + 1


def test_a_restore_with_a_dangling_reference_is_refused_whole() -> None:
    from rdb import Reference

    refs = [Reference("vol/", "agg", "agg/")]
    node = Node(StateMachine(references=refs))
    node.put("agg/a", {"name": "a"})
    node.put("vol/v", {"agg": "a"})
    source = Node(StateMachine())
    source.put("vol/w", {"agg": "missing"})
    results = [node.apply(c) for c in cmds.restore_commands(source.sm.snapshot(), "up-ref")]
    assert results[-1]["status"] == "invalid" and "vol/w needs agg/missing" in results[-1]["message"]
    assert node.sm.get("vol/v") is not None and node.sm.get("vol/w") is None


def test_a_restore_commit_from_an_older_log_keeps_its_old_meaning() -> None:
    # Replaying a log written before restores were checked must give every node the
    # same state as when the entry was first applied: no "checked" flag, no new checks.
    from rdb import Reference

    refs = [Reference("vol/", "agg", "agg/")]
    source = Node(StateMachine())
    source.put("vol/w", {"agg": "missing"})
    old_style = [msgpack.unpackb(c, raw=False) for c in cmds.restore_commands(source.sm.snapshot(), "up-old")]
    assert old_style[-1].pop("checked") is True
    node = Node(StateMachine(references=refs))
    results = [node.apply(msgpack.packb(c, use_bin_type=True)) for c in old_style]
    assert results[-1]["status"] == "ok" and node.sm.get("vol/w") is not None


def test_a_node_always_loads_its_own_snapshot() -> None:
    doc = _snapshot_doc([["a", 1, 1, 1, 1], ["k" * 1025, 1, 1, 1, 1]])
    data = msgpack.packb(doc, use_bin_type=True)
    with pytest.raises(ValueError):
        StateMachine().restore(data)  # an upload: refused
    sm = StateMachine()
    sm.restore(data, strict=False)  # its own Raft snapshot: loaded as it is
    assert sm.get("a") is not None
