"""What the node refuses in an uploaded snapshot before proposing anything."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from node._tables import key_problem
from rdb import InvalidCommand, KeyValue, StateMachine, snapshot_entries
from tests.ontap import REFERENCES, restore_problem

VS1 = {"name": "vs1", "state": "running", "protocols": ["nfs"], "root_volume": None}


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key, value, 1, 1, 1)


def test_a_clean_snapshot_passes() -> None:
    sm = StateMachine()
    assert restore_problem(sm.items()) is None
    assert restore_problem([kv("app/x", {"a": [1, 2.5, None, "s"]})]) is None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([kv("app/x", b"\x00")], "is not JSON"),
        ([kv("app/x", math.nan)], "is not JSON"),
        ([kv("app/x", {"deep": [math.inf]})], "is not JSON"),
        ([kv("app/x", msgpack.ExtType(1, b"x"))], "is not JSON"),
        ([kv("app/x", {1: "a"})], "keys that are not strings"),
        ([kv("app/line\nbreak", 1)], "newline"),
        ([kv("tables/nope/x", {})], "not under a known management table"),
        ([kv("tables/vservers/vs1", {"protocols": ["nfs"]})], "vservers row 'vs1': name: Field required"),
        ([kv("tables/vservers/vs2", VS1)], "vservers row 'vs2'"),  # the row names vs1
        ([kv("tables/vservers/vs1", {"name": "vs1", "protocols": ["nfs"]})], "not in the form the API stores"),
    ],
)
def test_what_the_api_could_not_serve_is_named(entries: list[KeyValue], message: str) -> None:
    problem = restore_problem(entries)
    assert problem is not None and message in problem


def test_a_stored_row_passes() -> None:
    from node._tables import validate_row
    from tests.ontap import TABLES

    row = validate_row(TABLES["vservers"], "vs1", {"name": "vs1", "protocols": ["nfs"]})
    assert restore_problem([kv("tables/vservers/vs1", row)]) is None


def test_snapshot_entries_checks_references() -> None:
    sm = StateMachine()
    vol = {"name": "v", "vserver": "vs9", "aggregate": "a", "size_mb": 1, "junction_path": "/v"}
    sm.apply(msgpack.packb({"v": 1, "kind": "put", "key": "tables/volumes/v", "value": vol}), 1)
    with pytest.raises(InvalidCommand, match="breaks a reference"):
        snapshot_entries(sm.snapshot(), REFERENCES)


def test_only_keys_the_route_cannot_reach_are_a_problem() -> None:
    # Older releases let tabs and other control characters in: they stay restorable.
    assert key_problem("a/b c") is None and key_problem("tab\t") is None and key_problem("a\x7f") is None
    assert key_problem("line\nbreak") is not None
