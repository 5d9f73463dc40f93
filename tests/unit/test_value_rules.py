"""One definition of a value (issue 9, points 1-3): its size is its stored form, its
depth is bounded, and value compares go by JSON type and value."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest

from node._http import restore_value_problem
from rdb import MAX_VALUE_BYTES, MAX_VALUE_DEPTH, InvalidCommand, StateMachine, ValueTooLarge, snapshot_entries
from rdb import _commands as cmds
from rdb._state import COMMAND_VERSION

_rids = itertools.count(1)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_depth_limit_on_the_write_path() -> None:
    cmds.check_value(nested(MAX_VALUE_DEPTH))
    cmds.check_value({"a": nested(MAX_VALUE_DEPTH - 1)})
    for too_deep in (nested(MAX_VALUE_DEPTH + 1), {"a": nested(MAX_VALUE_DEPTH)}, nested(100_000)):
        with pytest.raises(InvalidCommand, match="nests more than"):
            cmds.check_value(too_deep)
    with pytest.raises(InvalidCommand, match="nests more than"):
        cmds.txn([], [{"op": "put", "key": "k", "value": nested(MAX_VALUE_DEPTH + 1)}], [], request_id="r")


def test_size_is_the_stored_form_and_over_it_is_value_too_large() -> None:
    # 600 KiB of control characters is 3.6 MB as JSON (\u0000 escapes) but 600 KiB stored.
    cmds.check_value("\x00" * (600 * 1024))
    with pytest.raises(ValueTooLarge):
        cmds.check_value("x" * MAX_VALUE_BYTES)
    half = "x" * (MAX_VALUE_BYTES // 2)
    with pytest.raises(ValueTooLarge):
        cmds.txn(
            [], [{"op": "put", "key": "a", "value": half}, {"op": "put", "key": "b", "value": half}], [], request_id="r"
        )


def snapshot_with(value: Any) -> bytes:
    # Hand-packed: a restore must refuse what the write path would, whatever made the file.
    doc = {
        "format": 1,
        "revision": 1,
        "applied_index": 1,
        "compacted": 0,
        "kvs": [["app/x", value, 1, 1, 1]],
        "history": [],
        "dedup": [],
        "staging": None,
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (nested(MAX_VALUE_DEPTH + 1), "nests more than"),
        (nested(980), "nests more than"),
        ("x" * (3 * 1024 * 1024), "larger than"),
    ],
)
def test_a_restore_refuses_what_the_write_path_refuses(value: Any, message: str) -> None:
    entries = snapshot_entries(snapshot_with(value))
    problem = restore_value_problem(entries)
    assert problem is not None and message in problem and "app/x" in problem


def test_a_restore_takes_what_the_write_path_takes() -> None:
    assert restore_value_problem(snapshot_entries(snapshot_with(nested(MAX_VALUE_DEPTH)))) is None
    assert restore_value_problem(snapshot_entries(snapshot_with("\x00" * (600 * 1024)))) is None


def test_a_snapshot_nested_beyond_msgpack_is_malformed_not_a_crash() -> None:
    # 100,000 levels: msgpack's own stack limit, reported as a malformed snapshot.
    head = msgpack.packb({"format": 1, "revision": 1, "applied_index": 1, "compacted": 0, "history": [], "dedup": []})
    assert head[0] == 0x86  # a map of 6; one more entry, "kvs", is appended by hand
    row = b"\x95" + msgpack.packb("app/x") + b"\x91" * 100_000 + b"\x01" + b"\x01" * 3
    bomb = b"\x87" + head[1:] + msgpack.packb("kvs") + b"\x91" + row
    with pytest.raises(InvalidCommand):
        snapshot_entries(bomb)


# ------------------------------------------------------------------ typed value compares


def run_txn(sm: StateMachine, stored: Any, compare: dict[str, Any], index: list[int]) -> bool:
    index[0] += 1
    sm.apply(cmds.put("k", stored, request_id=f"p{next(_rids)}"), index[0])
    index[0] += 1
    res = sm.apply(
        cmds.txn([{"key": "k", "target": "value", **compare}], [], [], request_id=f"t{next(_rids)}"), index[0]
    )
    assert res["status"] == "ok", res
    return bool(res["succeeded"])


@pytest.mark.parametrize(
    ("stored", "result", "value", "expected"),
    [
        (True, "==", 1, False),
        (True, "==", 1.0, False),
        (False, "==", 0, False),
        (1, "==", True, False),
        (0, "==", False, False),
        (True, "!=", 1, True),
        (True, "==", True, True),
        (1, "==", 1.0, True),  # one JSON number
        ([True], "==", [1], False),
        ({"a": False}, "==", {"a": 0}, False),
        ({"a": [1, {"b": None}]}, "==", {"a": [1, {"b": None}]}, True),
        ("a", "==", "a", True),
        (2, ">", True, False),  # ordering only between numbers, or between strings
        (True, "<", 2, False),
        (2, ">", 1, True),
        ("b", ">", "a", True),
        (None, "==", None, True),
        (None, "==", False, False),
    ],
)
def test_value_compares_go_by_json_type_and_value(stored: Any, result: str, value: Any, expected: bool) -> None:
    assert run_txn(StateMachine(), stored, {"result": result, "value": value}, [0]) is expected


def test_a_txn_logged_before_typed_compares_keeps_its_meaning() -> None:
    # Replaying an old log must reach the state it reached then: there, True == 1.
    sm = StateMachine()
    sm.apply(cmds.put("k", True, request_id="p"), 1)
    old = msgpack.packb(
        {
            "v": COMMAND_VERSION,
            "kind": "txn",
            "compare": [{"key": "k", "target": "value", "value": 1}],
            "success": [],
            "failure": [],
        },
        use_bin_type=True,
    )
    assert sm.apply(old, 2)["succeeded"] is True
