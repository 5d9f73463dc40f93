"""Unit tests of the chaos checkers (``chaos._checkers``) and their reference model
(``chaos._model``).

Every checker is fed a correct history (it must pass) and known-bad histories (it must
fail): a stale read, a lost write, a duplicated write, a wrong, a stale and a fenced
data-plane answer, a lagging and a drifted blade table. The model is cross-checked
against the product's own projections and decisions (``node._blades``,
``node._dataplane``) on random configurations; only this test imports both.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.ontap import cifs_connect, nfs_mount
from chaos import _model
from chaos._checkers import (
    CheckResult,
    check_convergence,
    check_dataplane,
    check_linearizability,
    check_set,
)
from rdb import StateMachine
from rdb import _commands as cmds
from tests.ontap import build_blades

Op = dict[str, Any]
_ids = itertools.count(1)


def op(
    f: str,
    value: Any,
    invoke: float,
    complete: float | None,
    result: Any = None,
    *,
    outcome: str = "ok",
    key: str = "r1",
    kind: str = "register",
    node: str = "n1",
    process: int = 0,
) -> Op:
    return {
        "id": next(_ids),
        "process": process,
        "kind": kind,
        "f": f,
        "key": key,
        "value": value,
        "node": node,
        "invoke": invoke,
        "complete": complete,
        "outcome": outcome,
        "result": result,
    }


def types(result: CheckResult) -> list[str]:
    return [v["type"] for v in result.violations]


# ================================================================== linearizability


def test_sequential_register_history_passes() -> None:
    ops = [
        op("read", None, 0, 1, None),
        op("write", "a", 2, 3, 7),
        op("read", None, 4, 5, "a"),
        op("cas", ["a", "b"], 6, 7, True),
        op("cas", ["a", "c"], 8, 9, False),
        op("read", None, 10, 11, "b"),
    ]
    result = check_linearizability(ops)
    assert result.status == "pass", result.to_dict()
    assert result.stats["keys"] == 1 and result.violation_count == 0


def test_stale_read_fails() -> None:
    ops = [
        op("write", 1, 0, 1),
        op("write", 2, 2, 3),
        stale := op("read", None, 4, 5, 1),  # the write of 2 completed before this read began
    ]
    result = check_linearizability(ops)
    assert result.status == "fail" and types(result) == ["nonlinearizable"]
    violation = result.violations[0]
    assert violation["key"] == "r1"
    assert stale["id"] in [o["id"] for o in violation["window"]]
    assert violation["blocking_op"] == stale["id"]
    assert violation["value_at_stuck_point"] == 2


def test_concurrent_read_may_see_old_or_new_value() -> None:
    for seen in (1, 2):
        ops = [op("write", 1, 0, 1), op("write", 2, 2, 6), op("read", None, 3, 4, seen)]
        assert check_linearizability(ops).status == "pass"


def test_read_flip_flop_between_concurrent_reads_fails() -> None:
    # Both reads overlap the write, but once a read saw 2 a later read must not see 1.
    ops = [op("write", 1, 0, 1), op("write", 2, 2, 10), op("read", None, 3, 4, 2), op("read", None, 5, 6, 1)]
    assert check_linearizability(ops).status == "fail"


def test_unknown_write_taking_effect_late_is_accepted() -> None:
    ops = [
        op("write", 1, 0, 1),
        op("write", 2, 2, None, outcome="unknown"),
        op("read", None, 3, 4, 1),
        op("read", None, 50, 51, 1),
        op("read", None, 100, 101, 2),  # took effect long after its client gave up
        op("read", None, 102, 103, 2),
    ]
    result = check_linearizability(ops)
    assert result.status == "pass", result.to_dict()
    assert result.stats["promoted_unknown"] == 1


def test_unknown_write_never_taking_effect_is_accepted() -> None:
    ops = [
        op("write", 1, 0, 1),
        op("write", 2, 2, 3, outcome="unknown"),
        op("read", None, 4, 5, 1),
        op("read", None, 6, 7, 1),
    ]
    result = check_linearizability(ops)
    assert result.status == "pass"
    assert result.stats["pruned_unknown"] == 1


def test_unknown_write_cannot_be_undone() -> None:
    ops = [
        op("write", 1, 0, 1),
        op("write", 2, 2, None, outcome="unknown"),
        op("read", None, 3, 4, 2),
        op("read", None, 5, 6, 1),  # nobody wrote 1 again
    ]
    assert check_linearizability(ops).status == "fail"


def test_failed_write_never_happened() -> None:
    ops = [op("write", 1, 0, 1), op("write", 9, 2, 3, outcome="fail"), op("read", None, 4, 5, 9)]
    assert check_linearizability(ops).status == "fail"
    ok = [op("write", 1, 0, 1), op("write", 9, 2, 3, outcome="fail"), op("read", None, 4, 5, 1)]
    assert check_linearizability(ok).status == "pass"


def test_read_that_did_not_complete_imposes_nothing() -> None:
    ops = [
        op("write", 1, 0, 1),
        op("read", None, 2, None, 42, outcome="unknown"),
        op("read", None, 3, 4, 7, outcome="fail"),
        op("read", None, 5, 6, 1),
    ]
    assert check_linearizability(ops).status == "pass"


def test_cas_history() -> None:
    good = [
        op("write", 0, 0, 1, process=0),
        op("cas", [0, 1], 2, 5, True, process=1),
        op("cas", [0, 2], 3, 6, False, process=2),  # lost the race to process 1
        op("cas", [1, 3], 7, 8, True, process=1),
        op("cas", [9, 4], 9, None, outcome="unknown", process=2),  # could never apply
        op("read", None, 10, 11, 3, process=0),
    ]
    assert check_linearizability(good).status == "pass"
    # Both CASes from 0 succeeded: one of them must have seen something else.
    double = [
        op("write", 0, 0, 1),
        op("cas", [0, 1], 2, 5, True, process=1),
        op("cas", [0, 2], 3, 6, True, process=2),
        op("read", None, 7, 8, 2),
    ]
    assert check_linearizability(double).status == "fail"
    # A failed CAS while the value certainly was the expected one.
    wrong_fail = [op("write", 0, 0, 1), op("cas", [0, 1], 2, 3, False), op("read", None, 4, 5, 0)]
    assert check_linearizability(wrong_fail).status == "fail"


def test_unknown_cas_feeding_a_later_cas() -> None:
    # An unknown write of 5 is only "seen" through a cas expecting it: it must not be pruned.
    ops = [
        op("write", 1, 0, 1),
        op("write", 5, 2, None, outcome="unknown"),
        op("cas", [5, 6], 10, None, outcome="unknown"),
        op("read", None, 20, 21, 6),
    ]
    assert check_linearizability(ops).status == "pass"
    # A failed cas can be explained only by the unknown write having happened.
    ops = [
        op("write", 1, 0, 1),
        op("write", 5, 2, None, outcome="unknown"),
        op("cas", [1, 6], 10, 11, False),
        op("write", 7, 12, 13),
        op("read", None, 14, 15, 7),
    ]
    assert check_linearizability(ops).status == "pass"


def test_keys_are_checked_independently() -> None:
    ops = [
        op("write", 1, 0, 1, key="a"),
        op("read", None, 2, 3, 1, key="a"),
        op("write", 1, 0, 1, key="b"),
        op("write", 2, 2, 3, key="b"),
        op("read", None, 4, 5, 1, key="b"),
        op("write", 3, 0, 1, key="c"),
    ]
    result = check_linearizability(ops)
    assert result.status == "fail"
    assert [v["key"] for v in result.violations] == ["b"]
    assert result.stats["failed_keys"] == ["b"] and result.stats["keys"] == 3


def test_non_register_ops_are_ignored() -> None:
    ops = [op("add", "x", 0, 1, 3, kind="set"), op("read", None, 0, 1, None)]
    assert check_linearizability(ops).stats["keys"] == 1


def _hard_history(writers: int = 14) -> list[Op]:
    """Many fully concurrent writes and a read of a value nobody wrote: the search must
    try every order of the writes before it can say no."""
    ops = [op("write", f"v{i}", 0, 100, process=i) for i in range(writers)]
    ops.append(op("read", None, 101, 102, "nobody-wrote-this", process=writers))
    return ops


def test_state_cap_makes_the_result_inconclusive_never_pass() -> None:
    result = check_linearizability(_hard_history(), max_states=1_000)
    assert result.status == "inconclusive"
    assert "state limit" in result.inconclusive[0]
    assert result.stats["inconclusive_keys"] == ["r1"]


def test_time_cap_makes_the_result_inconclusive_never_pass() -> None:
    result = check_linearizability(_hard_history(), time_limit_s=0.0)
    assert result.status == "inconclusive"
    assert "time limit" in result.inconclusive[0]


def test_small_hard_history_is_decided() -> None:
    result = check_linearizability(_hard_history(writers=6))
    assert result.status == "fail"


def test_a_failing_key_beats_an_inconclusive_one() -> None:
    ops = [
        *_hard_history(),
        op("write", 1, 0, 1, key="b"),
        op("write", 2, 2, 3, key="b"),
        op("read", None, 4, 5, 1, key="b"),
    ]
    result = check_linearizability(ops, max_states=1_000)
    assert result.status == "fail" and result.inconclusive


def test_malformed_op_is_inconclusive() -> None:
    ops = [op("write", 1, 0, 1), op("cas", "not-a-pair", 2, 3, True)]
    assert check_linearizability(ops).status == "inconclusive"


def test_realistic_size_is_fast() -> None:
    """10 keys x 300 ops, each overlapping ~16 others, with unknown writes and cas: a second or two."""
    rng = random.Random(7)
    ops: list[Op] = []
    for k in range(10):
        ops += _sequential_history(rng, f"k{k}", 300, width=8.0)
    result = check_linearizability(ops, time_limit_s=30)
    assert result.status == "pass", result.to_dict()
    assert result.stats["elapsed_s"] < 10


def _sequential_history(rng: random.Random, key: str, n: int, width: float, values: int = 0) -> list[Op]:
    """A history that is linearizable by construction: op i takes effect at time i (or,
    for a failed or unapplied unknown op, never), inside a random window around it."""
    state: Any = None
    ops: list[Op] = []
    for i in range(n):
        t = float(i)
        invoke, complete = t - rng.uniform(0, width), t + rng.uniform(0, width)
        pick = rng.random()
        value = rng.randrange(values) if values else f"{key}-{i}"
        if pick < 0.45:
            ops.append(op("read", None, invoke, complete, state, key=key, process=i))
        elif pick < 0.75:
            state = value
            ops.append(op("write", value, invoke, complete, key=key, process=i))
        elif pick < 0.85:
            expected = state if rng.random() < 0.6 else "other"
            succeeded = expected == state
            if succeeded:
                state = value
            ops.append(op("cas", [expected, value], invoke, complete, succeeded, key=key, process=i))
        elif pick < 0.93:  # unknown: applied at t
            if rng.random() < 0.5:
                state = value
                ops.append(op("write", value, invoke, None, key=key, outcome="unknown", process=i))
            else:
                expected = state if rng.random() < 0.5 else "other"
                if expected == state:
                    state = value
                ops.append(op("cas", [expected, value], invoke, None, key=key, outcome="unknown", process=i))
        elif pick < 0.97:  # unknown, never applied
            ops.append(op("write", value, invoke, complete, key=key, outcome="unknown", process=i))
        else:  # failed: never applied
            ops.append(op("write", value, invoke, complete, key=key, outcome="fail", process=i))
    rng.shuffle(ops)
    return ops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    width=st.floats(0.0, 4.0),
    values=st.sampled_from([0, 2, 3, 5]),
)
def test_histories_from_a_sequential_execution_always_pass(seed: int, n: int, width: float, values: int) -> None:
    rng = random.Random(seed)
    ops = _sequential_history(rng, "a", n, width, values) + _sequential_history(rng, "b", n, width, values)
    result = check_linearizability(ops, time_limit_s=30)
    assert result.status == "pass", result.to_dict()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 30), values=st.sampled_from([0, 3]))
def test_a_read_moved_into_the_past_is_caught_or_harmless(seed: int, n: int, values: int) -> None:
    """Mutation: give a completed read the value before the last write that finished
    before it began. If no later write could explain that value, the checker must fail."""
    rng = random.Random(seed)
    ops = [op("write", rng.randrange(values) if values else f"w{i}", 2 * i, 2 * i + 1, key="m") for i in range(n)]
    victim = op("read", None, 2 * n + 1, 2 * n + 2, ops[-2]["value"], key="m")
    result = check_linearizability([*ops, victim])
    if ops[-2]["value"] == ops[-1]["value"]:
        assert result.status == "pass"
    else:
        assert result.status == "fail"


# ================================================================== lost / duplicated writes


def add(key: str, value: Any, outcome: str = "ok") -> Op:
    return op("add", value, 0, 1 if outcome == "ok" else None, 5, kind="set", key=key, outcome=outcome)


def reads(entries: Mapping[str, Any], version: int = 1) -> dict[str, dict[str, Any]]:
    return {k: {"value": v, "version": version} for k, v in entries.items()}


SET_OPS = [add("set/1", "a"), add("set/2", "b"), add("set/3", "c", "unknown"), add("set/4", "d", "unknown")]
SET_OPS += [add("set/5", "e", "fail")]
GOOD = {"set/1": "a", "set/2": "b", "set/3": "c"}  # set/3 (unknown) applied, set/4 (unknown) did not


def test_set_with_every_acked_write_present_passes() -> None:
    result = check_set(SET_OPS, {n: reads(GOOD) for n in ("n1", "n2", "n3")})
    assert result.status == "pass", result.to_dict()
    assert result.stats["unknown_keys_present"] == 1 and result.stats["unknown_keys_absent"] == 1


def test_lost_write_fails() -> None:
    lossy = dict(GOOD)
    del lossy["set/2"]
    result = check_set(SET_OPS, {"n1": reads(GOOD), "n2": reads(lossy), "n3": reads(GOOD)})
    assert result.status == "fail" and types(result) == ["lost_write"]
    assert result.violations[0]["node"] == "n2" and result.violations[0]["key"] == "set/2"


def test_duplicated_write_fails() -> None:
    doubled = {"n1": reads(GOOD), "n2": reads(GOOD)}
    doubled["n2"]["set/1"]["version"] = 2
    result = check_set(SET_OPS, doubled)
    assert result.status == "fail" and "duplicate_write" in types(result)


def test_corrupt_value_fails() -> None:
    bad = dict(GOOD, **{"set/1": "zzz"})
    result = check_set(SET_OPS, {"n1": reads(bad), "n2": reads(bad)})
    assert result.status == "fail" and set(types(result)) == {"corrupt_value"}


def test_phantom_and_failed_writes_fail() -> None:
    phantom = dict(GOOD, **{"set/99": "?"})
    assert "phantom_write" in types(check_set(SET_OPS, {"n1": reads(phantom)}))
    resurrected = dict(GOOD, **{"set/5": "e"})
    assert "failed_write_applied" in types(check_set(SET_OPS, {"n1": reads(resurrected)}))


def test_nodes_disagreeing_on_an_unknown_write_fail() -> None:
    without = {k: v for k, v in GOOD.items() if k != "set/3"}
    result = check_set(SET_OPS, {"n1": reads(GOOD), "n2": reads(without)})
    assert result.status == "fail" and types(result) == ["divergent"]


def test_unreadable_node_is_inconclusive() -> None:
    result = check_set(SET_OPS, {"n1": reads(GOOD), "n2": None})
    assert result.status == "inconclusive"
    assert check_set(SET_OPS, {}).status == "inconclusive"


# ================================================================== model and convergence


def base_config() -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "vservers": {
            "vs1": {"name": "vs1", "state": "running", "protocols": ["nfs", "cifs"]},
            "vs2": {"name": "vs2", "state": "stopped", "protocols": ["nfs"]},
        },
        "aggregates": {
            "a1": {"name": "a1", "home_node": "n1", "size_mb": 100},
            "a2": {"name": "a2", "home_node": "n2", "size_mb": 100},
        },
        "volumes": {
            "root": _vol("root", "a1", "/"),
            "data": _vol("data", "a2", "/data"),
            "off": _vol("off", "a2", "/off", state="offline"),
        },
        "lifs": {
            "l1": {"name": "l1", "vserver": "vs1", "address": "10.0.0.1", "home_node": "n1", "protocols": ["nfs"]},
            "l2": {"name": "l2", "vserver": "vs1", "address": "10.0.0.2", "home_node": "n2", "protocols": ["cifs"]},
        },
        "export_rules": {
            "vs1:default:1": _rule(1, "10.1.0.0/16", "ro"),
            "vs1:default:2": _rule(2, "10.0.0.0/8", "rw"),
        },
        "cifs_shares": {
            "vs1:pub": {
                "vserver": "vs1",
                "share": "pub",
                "path": "/data",
                "acl": [{"user": "Everyone", "permission": "read"}],
            },
        },
    }


def _vol(name: str, aggregate: str, junction: str, *, state: str = "online", vserver: str = "vs1") -> dict[str, Any]:
    return {
        "name": name,
        "vserver": vserver,
        "aggregate": aggregate,
        "size_mb": 10,
        "state": state,
        "junction_path": junction,
        "export_policy": "default",
    }


def _rule(index: int, client_match: str, access: str, policy: str = "default") -> dict[str, Any]:
    return {
        "vserver": "vs1",
        "policy": policy,
        "index": index,
        "client_match": client_match,
        "access": access,
        "protocols": ["nfs"],
    }


def test_model_projection_and_decisions() -> None:
    config = base_config()
    n2 = _model.project(config, "n2")
    assert set(n2["lifs"]) == {"l2"} and set(n2["aggregates"]) == {"a2"} and set(n2["volumes"]) == {"data", "off"}
    assert n2["vldb"]["root"] == {
        "volume": "root",
        "vserver": "vs1",
        "aggregate": "a1",
        "node": "n1",
        "junction_path": "/",
        "state": "online",
        "export_policy": "default",
    }
    assert _model.nfs_decision(config, "vs1", "/data/x", "10.0.0.9") == {
        "access": "rw",
        "volume": "data",
        "aggregate": "a2",
        "node": "n2",
    }
    assert _model.nfs_decision(config, "vs1", "/datax", "10.1.0.9")["access"] == "ro"
    assert _model.nfs_decision(config, "vs1", "/datax", "10.1.0.9")["volume"] == "root"
    assert _model.nfs_decision(config, "vs1", "/off", "10.0.0.9")["access"] == "denied"
    assert _model.nfs_decision(config, "vs2", "/", "10.0.0.9")["volume"] is None
    assert _model.nfs_decision(config, "vs1", "/", "192.168.0.1")["access"] == "denied"
    assert _model.cifs_decision(config, "vs1", "pub")["access"] == "ro"
    assert _model.cifs_decision(config, "vs1", "nope")["access"] == "denied"
    with pytest.raises(ValueError):
        _model.nfs_decisions(config, "vs1", "/", "not-an-ip")


def test_model_accepts_either_volume_on_ambiguous_junctions() -> None:
    config = base_config()
    config["volumes"]["twin"] = _vol("twin", "a1", "/data/")
    got = {d["volume"] for d in _model.nfs_decisions(config, "vs1", "/data/f", "10.0.0.9")}
    assert got == {"data", "twin"}


def blades_from(config: Mapping[str, Mapping[str, Any]], nodes: tuple[str, ...], revision: int) -> dict[str, Any]:
    return {
        n: {t: {"revision": revision, "rows": rows} for t, rows in _model.project(config, n).items()} for n in nodes
    }


def test_converged_blades_pass() -> None:
    config = base_config()
    result = check_convergence(blades_from(config, ("n1", "n2", "n3"), 40), config, 40)
    assert result.status == "pass", result.to_dict()
    assert result.stats["tables_checked"] == 21


def test_lagging_blade_table_after_heal_fails() -> None:
    config = base_config()
    blades = blades_from(config, ("n1", "n2"), 40)
    blades["n2"]["vldb"]["revision"] = 39
    result = check_convergence(blades, config, 40)
    assert result.status == "fail" and types(result) == ["lagging"]
    assert (result.violations[0]["node"], result.violations[0]["table"]) == ("n2", "vldb")


def test_blade_row_that_differs_fails() -> None:
    config = base_config()
    blades = blades_from(config, ("n1", "n2"), 40)
    blades["n1"]["export_rules"]["rows"]["vs1:default:2"] = dict(_rule(2, "10.0.0.0/8", "ro"))
    blades["n2"]["volumes"]["rows"].pop("data")
    blades["n2"]["lifs"]["rows"]["l1"] = config["lifs"]["l1"]  # homed on n1, not n2
    result = check_convergence(blades, config, 40)
    assert result.status == "fail" and types(result) == ["table_differs"] * 3
    by_table = {v["table"]: v for v in result.violations}
    assert by_table["export_rules"]["different_count"] == 1
    assert by_table["volumes"]["missing"] == ["data"]
    assert by_table["lifs"]["extra"] == ["l1"]


def test_missing_or_unreadable_blades() -> None:
    config = base_config()
    blades: dict[str, Any] = blades_from(config, ("n1",), 40)
    del blades["n1"]["cifs_shares"]
    assert types(check_convergence(blades, config, 40)) == ["missing_table"]
    assert check_convergence({"n1": None}, config, 40).status == "inconclusive"


# ------------------------------------------------------------------ cross-check against the product


def _random_config(rng: random.Random) -> dict[str, dict[str, dict[str, Any]]]:
    vservers = {
        f"vs{i}": {
            "name": f"vs{i}",
            "state": rng.choice(["running", "running", "stopped"]),
            "protocols": rng.sample(["nfs", "cifs", "iscsi"], rng.randint(0, 3)),
        }
        for i in range(1, rng.randint(1, 3) + 1)
    }
    aggregates = {
        f"a{i}": {"name": f"a{i}", "home_node": rng.choice(["n1", "n2", "n3"]), "size_mb": 10}
        for i in range(1, rng.randint(1, 4) + 1)
    }
    junctions = ["/", "/data", "/data/", "/data/deep", "/x", "/x/y", "/datax"]
    volumes = {}
    for i in range(rng.randint(0, 6)):
        name = f"v{i}"
        volumes[name] = {
            "name": name,
            "vserver": rng.choice(sorted(vservers)),
            "aggregate": rng.choice([*sorted(aggregates), "ghost"]),  # a dangling aggregate: node None
            "size_mb": 10,
            "state": rng.choice(["online", "online", "offline"]),
            "junction_path": rng.choice(junctions),
            "export_policy": rng.choice(["default", "secure"]),
        }
    rules = {}
    for _ in range(rng.randint(0, 6)):
        vserver, policy, index = rng.choice(sorted(vservers)), rng.choice(["default", "secure"]), rng.randint(1, 12)
        rules[f"{vserver}:{policy}:{index}"] = {
            "vserver": vserver,
            "policy": policy,
            "index": index,
            "client_match": rng.choice(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "::/0"]),
            "access": rng.choice(["ro", "rw"]),
            "protocols": rng.choice([["nfs"], ["cifs"], ["nfs", "cifs"]]),
        }
    shares = {}
    for i in range(rng.randint(0, 4)):
        vserver = rng.choice(sorted(vservers))
        acl = [
            {"user": rng.choice(["Everyone", "alice"]), "permission": rng.choice(["read", "change", "full_control"])}
            for _ in range(rng.randint(0, 2))
        ]
        shares[f"{vserver}:s{i}"] = {
            "vserver": vserver,
            "share": f"s{i}",
            "path": rng.choice([*junctions, "/data/z"]),
            "acl": acl,
        }
    lifs = {
        f"l{i}": {
            "name": f"l{i}",
            "vserver": rng.choice(sorted(vservers)),
            "address": f"10.9.0.{i}",
            "home_node": rng.choice(["n1", "n2", "n3"]),
            "protocols": ["nfs"],
        }
        for i in range(rng.randint(0, 4))
    }
    return {
        "vservers": vservers,
        "aggregates": aggregates,
        "volumes": volumes,
        "export_rules": rules,
        "cifs_shares": shares,
        "lifs": lifs,
    }


def _state_machine(config: Mapping[str, Mapping[str, Any]]) -> StateMachine:
    sm = StateMachine()
    for index, (table, key) in enumerate(((t, k) for t, rows in config.items() for k in rows), start=1):
        result = sm.apply(cmds.put(f"tables/{table}/{key}", config[table][key], request_id=f"r{index}"), index)
        assert result["status"] == "ok", result
    return sm


@pytest.mark.parametrize("seed", range(300))
def test_model_agrees_with_the_product(seed: int) -> None:
    rng = random.Random(seed)
    config = _random_config(rng)
    sm = _state_machine(config)
    for node in ("n1", "n2", "n3"):
        blades = build_blades(node)
        model = _model.project(config, node)
        tables = {**blades["nblade"], **blades["dblade"]}
        assert set(tables) == set(_model.BLADE_TABLES)
        for name, table in tables.items():
            desired = table.desired_all(sm)
            assert desired == model[name], (node, name)
            for key, row in desired.items():
                table.tamper(key, row)
        nblade = blades["nblade"]
        for _ in range(10):
            vserver = rng.choice([*sorted(config["vservers"]), "ghost"])
            path = rng.choice(["/", "/data", "/data/deep/f", "/datax", "/x/y/z", "/nope", "/data/"])
            client = rng.choice(["10.0.0.5", "10.1.2.3", "192.168.1.7", "::1"])
            got = nfs_mount(nblade, vserver, path, client)
            want = _model.nfs_decisions(config, vserver, path, client)
            assert _model.acceptable(got, want), (vserver, path, client, got, want)
            share = rng.choice([f"s{i}" for i in range(5)])
            user = rng.choice(["Everyone", "alice"])
            got = cifs_connect(nblade, vserver, share, user)
            want = _model.cifs_decisions(config, vserver, share, user)
            assert _model.acceptable(got, want), (vserver, share, user, got, want)


# ================================================================== data plane


def config_log(config: Mapping[str, Mapping[str, Any]], at: float = 0.0) -> list[dict[str, Any]]:
    """The base config as a log: one revision per row, from revision 1, observed at ``at``."""
    rows = [(t, k, r) for t, table in config.items() for k, r in table.items()]
    return [{"revision": i, "at": at, "key": f"tables/{t}/{k}", "row": r} for i, (t, k, r) in enumerate(rows, start=1)]


BASE = base_config()
LOG = config_log(BASE)
R0 = len(LOG)  # the revision of the complete base config
# At t=10, revision R0+5 makes rule 2 read-only (R0+1..R0+4 are register writes: not in the log).
LOG_CHANGED = [
    *LOG,
    {"revision": R0 + 5, "at": 10.0, "key": "tables/export_rules/vs1:default:2", "row": _rule(2, "10.0.0.0/8", "ro")},
]
CLIENT = {"vserver": "vs1", "path": "/data/f", "client": "10.2.0.1"}


def answer(
    access: str, revision: int, volume: str | None = "data", aggregate: str | None = "a2", node: str | None = "n2"
) -> dict[str, Any]:
    return {
        "access": access,
        "reason": "whatever",
        "volume": volume,
        "aggregate": aggregate,
        "node": node,
        "revision": revision,
    }


def probe(
    result: Any, invoke: float, *, f: str = "nfs", value: Any = None, node: str = "n1", outcome: str = "ok"
) -> Op:
    return op(
        f,
        CLIENT if value is None else value,
        invoke,
        invoke + 0.01,
        result,
        kind="dataplane",
        key="vs1:/data/f",
        node=node,
        outcome=outcome,
    )


def test_true_answers_pass() -> None:
    ops = [
        probe(answer("rw", R0), 1.0),
        probe(answer("rw", R0 + 3), 2.0, node="shared"),
        probe(answer("ro", R0 + 5), 11.0),
        probe(answer("ro", R0, "data", "a2", "n2"), 3.0, f="cifs", value={"vserver": "vs1", "share": "pub"}),
        probe(answer("denied", R0, None, None, None), 3.0, f="cifs", value={"vserver": "vs1", "share": "nope"}),
        probe({"fenced": {"table": "vldb"}}, 4.0, outcome="fail"),
        probe(None, 4.0, outcome="unknown"),
    ]
    result = check_dataplane(ops, LOG_CHANGED, [], log_complete_through=R0 + 10)
    assert result.status == "pass", result.to_dict()
    assert result.stats["checked"] == 5 and result.stats["fence_unattributable"] == 1


def test_wrong_answer_fails() -> None:
    bad = probe(answer("rw", R0 + 5), 11.0)  # revision R0+5 made 10/8 read-only
    result = check_dataplane([bad], LOG_CHANGED, [], log_complete_through=R0 + 5)
    assert result.status == "fail" and types(result) == ["wrong_answer"]
    violation = result.violations[0]
    assert violation["expected"][0]["access"] == "ro"
    assert R0 in violation["fits_config_at_revisions"] and R0 + 5 not in violation["fits_config_at_revisions"]


def test_wrong_volume_or_node_fails() -> None:
    ops = [
        probe(answer("rw", R0, node="n1"), 1.0),
        probe(answer("rw", R0, volume="root", aggregate="a1", node="n1"), 1.0),
    ]
    assert types(check_dataplane(ops, LOG, [], log_complete_through=R0)) == ["wrong_answer"] * 2


def test_stale_answer_beyond_the_bound_fails() -> None:
    # At t=20 the change observed at t=10 is more than 5 s old: an answer from before it is stale.
    stale = probe(answer("rw", R0 + 2), 20.0)
    within = probe(answer("rw", R0 + 2), 12.0)  # only 2 s after the change: allowed
    result = check_dataplane([stale, within], LOG_CHANGED, [], log_complete_through=R0 + 10)
    assert result.status == "fail" and types(result) == ["stale_answer"]
    assert result.violations[0]["op"]["id"] == stale["id"]
    assert result.violations[0]["required_revision"] == R0 + 5


def test_old_revision_is_fine_when_nothing_relevant_changed() -> None:
    irrelevant = [
        *LOG,
        {
            "revision": R0 + 5,
            "at": 10.0,
            "key": "tables/lifs/l9",
            "row": {"name": "l9", "vserver": "vs1", "address": "10.0.0.9", "home_node": "n3", "protocols": []},
        },
        {"revision": R0 + 6, "at": 10.0, "key": "kv/other", "row": {"x": 1}},
    ]
    ok = probe(answer("rw", R0 + 1), 30.0)
    result = check_dataplane([ok], irrelevant, [], log_complete_through=R0 + 6)
    assert result.status == "pass", result.to_dict()
    assert result.stats["older_than_bound"] == 1


def test_answer_served_inside_a_fault_window_fails() -> None:
    windows = [
        {"node": "n1", "table": "vldb", "start": 5.0, "end": 9.0},
        {"node": "n2", "table": "cifs_shares", "start": 0.0, "end": None},  # nfs does not depend on it
    ]
    ops = [
        served := probe(answer("rw", R0), 6.0),  # inside [5.5, 9] on n1
        probe(answer("rw", R0), 5.2),  # within the slack: the fence may not be up yet
        probe(answer("rw", R0), 9.5),  # after the window
        probe({"fenced": {"table": "vldb"}}, 7.0, outcome="fail"),  # fenced: as it should be
        probe(answer("rw", R0), 7.0, node="n2"),
        probe(answer("rw", R0), 7.0, node="shared"),
    ]
    result = check_dataplane(ops, LOG, windows, log_complete_through=R0)
    assert result.status == "fail" and types(result) == ["served_while_failed"]
    assert result.violations[0]["op"]["id"] == served["id"] and result.violations[0]["table"] == "vldb"
    cifs = probe(answer("ro", R0), 7.0, f="cifs", value={"vserver": "vs1", "share": "pub"}, node="n2")
    assert types(check_dataplane([cifs], LOG, windows, log_complete_through=R0)) == ["served_while_failed"]


def test_custom_dependencies() -> None:
    windows = [{"node": "n1", "table": "vldb", "start": 0.0, "end": 10.0}]
    ops = [probe(answer("rw", R0), 6.0)]
    result = check_dataplane(ops, LOG, windows, dependencies={"nfs": {"export_rules"}}, log_complete_through=R0)
    assert result.status == "pass"


def test_incomplete_config_log_is_inconclusive_never_pass() -> None:
    ops = [probe(answer("rw", R0), 1.0)]
    assert check_dataplane(ops, LOG[3:], [], log_complete_from=4).status == "inconclusive"
    assert check_dataplane(ops, [], []).status == "inconclusive"  # revision R0 is beyond an empty log
    beyond = check_dataplane([probe(answer("rw", R0 + 7), 1.0)], LOG, [])
    assert beyond.status == "inconclusive" and beyond.stats["unchecked_beyond_log"] == 1
    unordered = check_dataplane(ops, list(reversed(LOG)), [], log_complete_through=R0)
    assert unordered.status == "inconclusive"
    # Inconclusive config does not hide a fence violation.
    windows = [{"node": "n1", "table": "vldb", "start": 0.0, "end": 10.0}]
    assert check_dataplane(ops, [], windows).status == "fail"


def test_malformed_answer_fails() -> None:
    ops = [probe({"access": "rw"}, 1.0), probe("oops", 1.0)]
    result = check_dataplane(ops, LOG, [], log_complete_through=R0)
    assert types(result) == ["malformed_answer"] * 2


def test_results_serialize() -> None:
    import json

    bad = probe(answer("rw", R0 + 5), 11.0)
    for result in (
        check_dataplane([bad], LOG_CHANGED, [], log_complete_through=R0 + 5),
        check_linearizability(_hard_history(4)),
        check_set(SET_OPS, {"n1": {}}),
        check_convergence({"n1": {}}, BASE, 1),
    ):
        text = json.dumps(result.to_dict(), allow_nan=False)
        assert json.loads(text)["status"] == "fail"


def _brute_force_linearizable(ops: list[Op]) -> bool:
    """The definition, by exhaustive search: some subset of the unknown writes/cas plus
    every completed op, in some order respecting real time (a before b when a completed
    strictly before b was invoked), replays correctly on a register starting at None."""
    must: list[Op] = []
    may: list[Op] = []
    for o in ops:
        done = o["outcome"] == "ok" and o["complete"] is not None
        if o["outcome"] == "fail" or (o["f"] == "read" and not done):
            continue
        (must if done else may).append(o)
    chosen = must + may

    def ends(o: Op) -> float:
        return float(o["complete"]) if o in must else float("inf")

    def apply(o: Op, state: Any) -> tuple[bool, Any]:
        if o["f"] == "read":
            return o["result"] == state, state
        if o["f"] == "write":
            return True, o["value"]
        expected, new = o["value"]
        if o in may:
            return True, new if state == expected else state
        if o["result"]:
            return state == expected, new
        return state != expected, state

    def dfs(done: list[Op], state: Any) -> bool:
        if all(o in done for o in must):
            return True
        for o in chosen:
            if o in done:
                continue
            if any(p not in done and p is not o and ends(p) < o["invoke"] for p in must):
                continue  # a required op that completed before o began is still unplaced
            ok, new = apply(o, state)
            if ok and dfs([*done, o], new):
                return True
        return False

    return dfs([], None)


def _random_small_history(rng: random.Random) -> list[Op]:
    values = [None, 0, 1, 2]
    ops = []
    for i in range(rng.randint(1, 6)):
        f = rng.choice(["read", "read", "write", "write", "cas"])
        invoke = rng.randint(0, 6)
        outcome = rng.choice(["ok", "ok", "ok", "unknown", "fail"])
        complete = None if outcome == "unknown" and rng.random() < 0.5 else invoke + rng.randint(0, 3)
        value: Any = None
        result: Any = None
        if f == "read":
            result = rng.choice(values)
        elif f == "write":
            value = rng.choice(values[1:])
        else:
            value = [rng.choice(values), rng.choice(values[1:])]
            result = rng.choice([True, False])
        ops.append(op(f, value, invoke, complete, result, outcome=outcome, process=i))
    return ops


def test_search_agrees_with_brute_force_on_small_random_histories() -> None:
    """Soundness and completeness of the search and of its reductions for unknown ops
    (promotion, pruning, collapsing unobserved values, grouping)."""
    rng = random.Random(1234)
    verdicts = {"pass": 0, "fail": 0}
    for _ in range(3000):
        ops = _random_small_history(rng)
        want = "pass" if _brute_force_linearizable(ops) else "fail"
        got = check_linearizability(ops).status
        assert got == want, ops
        verdicts[want] += 1
    assert min(verdicts.values()) > 300, verdicts


def test_wrong_answer_inside_a_drift_window_is_excused_and_counted() -> None:
    bad = probe(answer("ro", R0), 6.0, node="n2")
    bad_shared = probe(answer("ro", R0), 6.5, node="shared")
    later = probe(answer("ro", R0), 20.0, node="n2")
    drift = [{"node": "n2", "start": 5.0, "end": 10.0}]
    result = check_dataplane([bad, bad_shared, later], LOG, [], log_complete_through=R0, drift_windows=drift)
    assert types(result) == ["wrong_answer"] and result.violations[0]["op"]["id"] == later["id"]
    assert result.stats["excused_wrong_answers"] == 2
