"""Several writes in one log entry (``_commands.batch``): applied in order, each with its
own result, exactly as if proposed one after another."""

from __future__ import annotations

import msgpack

from rdb import StateMachine
from rdb import _commands as cmds
from rdb._state import COMMAND_VERSION


def _one_by_one(commands: list[bytes]) -> tuple[StateMachine, list[dict]]:
    sm = StateMachine()
    return sm, [sm.apply(c, i + 1) for i, c in enumerate(commands)]


def test_a_batch_gives_the_results_and_state_of_its_commands_applied_in_order() -> None:
    commands = [
        cmds.put("a", 1, request_id="r1"),
        cmds.put("a", 2, prev_revision=1, request_id="r2"),
        cmds.put("a", 3, prev_revision=1, request_id="r3"),  # conflict: a is at revision 2 now
        cmds.delete("missing", request_id="r4"),
        cmds.txn(
            [{"key": "a", "target": "value", "result": "==", "value": 2}],
            [{"op": "put", "key": "b", "value": "x"}],
            [],
            request_id="r5",
        ),
        cmds.put("a", 1, request_id="r1"),  # a retry of r1: its first result, not applied again
    ]
    expected_sm, expected = _one_by_one(commands)
    sm = StateMachine()
    result = sm.apply(cmds.batch(commands), 7)
    assert result["status"] == "ok"
    assert result["results"] == expected
    assert [r["status"] for r in expected] == ["ok", "ok", "conflict", "not_found", "ok", "ok"]
    assert expected[-1].get("duplicate") is True
    assert result["revision"] == sm.revision == expected_sm.revision == 3
    assert sm.range("")[0] == expected_sm.range("")[0]
    assert sm.applied_index == 7


def test_a_batch_inside_a_batch_or_a_malformed_one_changes_nothing() -> None:
    sm = StateMachine()
    inner = cmds.batch([cmds.put("a", 1, request_id="r1")])
    assert sm.apply(cmds.batch([inner]), 1)["results"] == [{"status": "invalid", "message": "nested batch"}]
    bad = msgpack.packb({"kind": "batch", "v": COMMAND_VERSION, "cmds": ["not bytes"]}, use_bin_type=True)
    assert sm.apply(bad, 2)["status"] == "invalid"
    assert sm.revision == 0 and sm.get("a") is None
