"""Validation limits of the command builders in ``rdb._commands``.

``InvalidCommand`` must be raised *before* anything is encoded, for every bad input, and
values exactly at a limit must be accepted.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest

import rdb
from rdb import InvalidCommand
from rdb import _commands as cmds
from rdb._state import COMMAND_VERSION

RID = "r-1"


def decode(payload: bytes) -> dict[str, Any]:
    doc = msgpack.unpackb(payload, raw=False)
    assert isinstance(doc, dict)
    return doc


def bytes_value_of_encoded_size(n: int) -> bytes:
    # msgpack bin32 header is 5 bytes (used from 64 KiB up).
    assert n >= 65536 + 5
    value = b"x" * (n - 5)
    assert len(msgpack.packb(value, use_bin_type=True)) == n
    return value


# --------------------------------------------------------------------------- constants


def test_public_limits() -> None:
    assert rdb.MAX_KEY_BYTES == 1024
    assert rdb.MAX_VALUE_BYTES == 1024 * 1024
    assert rdb.MAX_TXN_OPS == 128


def test_new_request_ids_are_unique_within_and_across_processes() -> None:
    import subprocess
    import sys

    ids = [cmds.new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    prefix, _, counter = ids[0].rpartition("-")
    assert len(prefix) == 32 and int(prefix, 16) >= 0 and counter.isdigit()
    code = "from rdb._commands import new_request_id; print(new_request_id())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other.rpartition("-")[0] != prefix  # another process (node, restart) has its own prefix
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its first id and exits at once
        os.write(write, cmds.new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 200).decode().rpartition("-")[0] != prefix  # nor does a forked child


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "key",
    [
        "",
        None,
        1,
        b"bytes",
        ["a"],
        "k" * 1025,
        "é" * 512 + "a",  # 513 characters but 1025 bytes
        "a\x00b",
        "\x00",
        "\ud800",  # a lone surrogate cannot be encoded as UTF-8
    ],
)
def test_check_key_rejects(key: Any) -> None:
    with pytest.raises(InvalidCommand):
        cmds.check_key(key)
    with pytest.raises(InvalidCommand):
        cmds.put(key, 1, request_id=RID)
    with pytest.raises(InvalidCommand):
        cmds.delete(key, request_id=RID)


@pytest.mark.parametrize("key", ["a", "k" * 1024, "é" * 512, "€" * 341 + "a", "a/b/c", " ", "\u2603"])
def test_check_key_accepts_up_to_the_limit(key: str) -> None:
    assert len(key.encode()) <= 1024
    assert cmds.check_key(key) == key
    assert decode(cmds.put(key, 1, request_id=RID))["key"] == key
    assert decode(cmds.delete(key, request_id=RID))["key"] == key


def test_key_limit_is_in_bytes_not_characters() -> None:
    cmds.check_key("€" * 341 + "a")  # 1024 bytes
    with pytest.raises(InvalidCommand):
        cmds.check_key("€" * 342)  # 1026 bytes, 342 characters


# --------------------------------------------------------------------------- values


def test_value_exactly_at_limit_is_accepted() -> None:
    value = bytes_value_of_encoded_size(rdb.MAX_VALUE_BYTES)
    assert len(cmds.check_value(value)) == rdb.MAX_VALUE_BYTES
    assert decode(cmds.put("k", value, request_id=RID))["value"] == value


def test_value_one_byte_over_limit_is_rejected() -> None:
    value = bytes_value_of_encoded_size(rdb.MAX_VALUE_BYTES + 1)
    with pytest.raises(InvalidCommand):
        cmds.check_value(value)
    with pytest.raises(InvalidCommand):
        cmds.put("k", value, request_id=RID)


def test_string_value_limit_counts_encoded_bytes() -> None:
    # str32 header is 5 bytes; a 3-byte character makes the encoding larger than len().
    ok = "x" * (rdb.MAX_VALUE_BYTES - 5)
    assert len(cmds.check_value(ok)) == rdb.MAX_VALUE_BYTES
    over = "€" * ((rdb.MAX_VALUE_BYTES - 5) // 3 + 1)
    assert len(over) < rdb.MAX_VALUE_BYTES
    with pytest.raises(InvalidCommand):
        cmds.check_value(over)


def test_structured_value_over_limit_is_rejected() -> None:
    value = {"a": b"x" * (600 * 1024), "b": b"y" * (600 * 1024)}
    with pytest.raises(InvalidCommand):
        cmds.put("k", value, request_id=RID)


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**64, -(2**63) - 1, "\ud800", {"a": object()}])
def test_unencodable_value_is_rejected(value: Any) -> None:
    with pytest.raises(InvalidCommand):
        cmds.check_value(value)
    with pytest.raises(InvalidCommand):
        cmds.put("k", value, request_id=RID)


@pytest.mark.parametrize(
    "value", [None, 0, -1, 2**64 - 1, 1.5, True, "", "s", b"", b"b", [1, "a"], {"a": [1, {"b": None}]}]
)
def test_ordinary_values_round_trip(value: Any) -> None:
    assert decode(cmds.put("k", value, request_id=RID))["value"] == value


# --------------------------------------------------------------------------- revisions


@pytest.mark.parametrize("prev", [-1, True, False, 1.0, "1", [1]])
def test_bad_prev_revision_is_rejected(prev: Any) -> None:
    with pytest.raises(InvalidCommand):
        cmds.put("k", 1, prev_revision=prev, request_id=RID)
    with pytest.raises(InvalidCommand):
        cmds.delete("k", prev_revision=prev, request_id=RID)


@pytest.mark.parametrize("prev", [None, 0, 1, 2**40])
def test_good_prev_revision_is_encoded(prev: int | None) -> None:
    assert decode(cmds.put("k", 1, prev_revision=prev, request_id=RID))["prev_revision"] == prev
    assert decode(cmds.delete("k", prev_revision=prev, request_id=RID))["prev_revision"] == prev


# --------------------------------------------------------------------------- encoding


def test_commands_are_versioned_maps() -> None:
    put = decode(cmds.put("k", {"x": 1}, prev_revision=3, request_id="abc"))
    digest = put.pop("dg")
    assert put == {"kind": "put", "rid": "abc", "key": "k", "value": {"x": 1}, "prev_revision": 3, "v": COMMAND_VERSION}
    # The digest covers everything but the request id.
    assert decode(cmds.put("k", {"x": 1}, prev_revision=3, request_id="other"))["dg"] == digest
    assert decode(cmds.put("k", {"x": 2}, prev_revision=3, request_id="abc"))["dg"] != digest
    dele = decode(cmds.delete("k", request_id="abc"))
    assert isinstance(dele.pop("dg"), str)
    assert dele == {"kind": "delete", "rid": "abc", "key": "k", "prev_revision": None, "v": COMMAND_VERSION}
    assert decode(cmds.barrier()) == {"kind": "barrier", "v": COMMAND_VERSION}
    txn = decode(cmds.txn([{"key": "k"}], [{"op": "get", "key": "k"}], [], request_id="abc"))
    assert isinstance(txn.pop("dg"), str)
    assert txn == {
        "kind": "txn",
        "rid": "abc",
        "compare": [{"key": "k"}],
        "success": [{"op": "get", "key": "k"}],
        "failure": [],
        "typed_compare": True,
        "v": COMMAND_VERSION,
    }


# --------------------------------------------------------------------------- txn


def _gets(n: int) -> list[dict[str, Any]]:
    return [{"op": "get", "key": f"k{i}"} for i in range(n)]


def test_txn_exactly_max_ops_is_accepted() -> None:
    cmds.txn([], _gets(rdb.MAX_TXN_OPS), [], request_id=RID)
    compares = [{"key": f"k{i}", "target": "version", "value": 0} for i in range(40)]
    cmds.txn(compares, _gets(44), _gets(44), request_id=RID)


def test_txn_over_max_ops_is_rejected() -> None:
    with pytest.raises(InvalidCommand):
        cmds.txn([], _gets(rdb.MAX_TXN_OPS + 1), [], request_id=RID)
    compares = [{"key": f"k{i}", "target": "version", "value": 0} for i in range(41)]
    with pytest.raises(InvalidCommand):
        cmds.txn(compares, _gets(44), _gets(44), request_id=RID)


@pytest.mark.parametrize(
    "branch",
    [
        [{"op": "put", "key": "a", "value": 1}, {"op": "put", "key": "a", "value": 2}],
        [{"op": "put", "key": "a", "value": 1}, {"op": "delete", "key": "a"}],
        [{"op": "delete", "key": "a"}, {"op": "delete", "key": "a"}],
        [{"op": "delete", "key": "a"}, {"op": "get", "key": "b"}, {"op": "put", "key": "a", "value": 1}],
    ],
)
def test_txn_duplicate_writes_in_one_branch_are_rejected(branch: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidCommand):
        cmds.txn([], branch, [], request_id=RID)
    with pytest.raises(InvalidCommand):
        cmds.txn([], [], branch, request_id=RID)


def test_txn_same_key_in_both_branches_or_read_and_write_is_fine() -> None:
    cmds.txn(
        [],
        [{"op": "get", "key": "a"}, {"op": "put", "key": "a", "value": 1}, {"op": "get", "key": "a"}],
        [{"op": "delete", "key": "a"}],
        request_id=RID,
    )


@pytest.mark.parametrize(
    "compare",
    [
        {"key": "a", "target": "lease"},
        {"key": "a", "target": "Version"},
        {"key": "a", "target": None},
        {"key": "a", "result": "<="},
        {"key": "a", "result": "="},
        {"key": "a", "target": "version", "value": -1},
        {"key": "a", "target": "mod_revision", "value": "3"},
        {"key": "a", "target": "create_revision", "value": True},
        {"key": "", "target": "version", "value": 1},
        {"target": "version", "value": 1},
        {"key": "a\x00", "target": "version", "value": 1},
        {"key": "a", "target": "value", "value": object()},
        {"key": "a", "target": "value", "value": b"x" * (rdb.MAX_VALUE_BYTES + 1)},
    ],
)
def test_txn_bad_compare_is_rejected(compare: dict[str, Any]) -> None:
    with pytest.raises(InvalidCommand):
        cmds.txn([compare], [], [], request_id=RID)


@pytest.mark.parametrize("target", ["mod_revision", "create_revision", "version", "value"])
@pytest.mark.parametrize("result", ["==", "!=", "<", ">"])
def test_txn_every_compare_target_and_result_is_accepted(target: str, result: str) -> None:
    value: Any = "v" if target == "value" else 3
    cmds.txn([{"key": "a", "target": target, "result": result, "value": value}], [], [], request_id=RID)


@pytest.mark.parametrize(
    "op",
    [
        {"op": "range", "key": "a"},
        {"op": None, "key": "a"},
        {"key": "a"},
        {"op": "put", "key": ""},
        {"op": "get"},
        {"op": "delete", "key": "a\x00"},
        {"op": "put", "key": "a", "value": object()},
        {"op": "put", "key": "a", "value": b"x" * (rdb.MAX_VALUE_BYTES + 1)},
        {"op": "get", "key": "a", "extra": object()},  # unencodable extra field
    ],
)
def test_txn_bad_op_is_rejected(op: dict[str, Any]) -> None:
    with pytest.raises(InvalidCommand):
        cmds.txn([], [op], [], request_id=RID)
    with pytest.raises(InvalidCommand):
        cmds.txn([], [], [op], request_id=RID)


@pytest.mark.parametrize("bad", [1, "a", None, ["op", "get"]])
def test_txn_non_map_parts_are_rejected(bad: Any) -> None:
    with pytest.raises(InvalidCommand):
        cmds.txn([bad], [], [], request_id=RID)
    with pytest.raises(InvalidCommand):
        cmds.txn([], [bad], [], request_id=RID)


def test_txn_total_value_bytes_at_limit_is_accepted() -> None:
    half = bytes_value_of_encoded_size(rdb.MAX_VALUE_BYTES // 2)
    cmds.txn(
        [], [{"op": "put", "key": "a", "value": half}, {"op": "put", "key": "b", "value": half}], [], request_id=RID
    )


def test_txn_total_value_bytes_over_limit_is_rejected() -> None:
    half = bytes_value_of_encoded_size(rdb.MAX_VALUE_BYTES // 2)
    bigger = bytes_value_of_encoded_size(rdb.MAX_VALUE_BYTES // 2 + 1)
    with pytest.raises(InvalidCommand):
        cmds.txn(
            [],
            [{"op": "put", "key": "a", "value": half}, {"op": "put", "key": "b", "value": bigger}],
            [],
            request_id=RID,
        )
    # The cap covers both branches together...
    with pytest.raises(InvalidCommand):
        cmds.txn(
            [], [{"op": "put", "key": "a", "value": half}], [{"op": "put", "key": "a", "value": bigger}], request_id=RID
        )
    # ...and values carried by value compares.
    with pytest.raises(InvalidCommand):
        cmds.txn(
            [{"key": "a", "target": "value", "value": half}],
            [{"op": "put", "key": "a", "value": bigger}],
            [],
            request_id=RID,
        )
