"""The chaos harness's independent model of the proxy app (``chaos._proxy_model``, via
``chaos._apps.PROXY``) against the product's own projections and data plane
(``apps.proxy`` through the runtime's blade tables) on random configurations built the
way the chaos workload builds them; and the generic checkers judging a proxy history
(a wrong and a fenced-table answer must fail)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from apps.proxy import app as proxy_app
from apps.proxy import route_request
from chaos._apps import PROXY
from chaos._checkers import check_convergence, check_dataplane
from node._blades import build_blades
from node._tables import TableRegistry
from rdb import StateMachine
from rdb import _commands as cmds

NODES = ["n1", "n2", "n3"]
REGISTRY = TableRegistry(proxy_app)


def _config(rng: random.Random, changes: int) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {t: {} for t in PROXY.management_tables}
    for table, key, row in PROXY.base_config(NODES):
        config[table][key] = REGISTRY[table].model.model_validate(row).model_dump(mode="json")
    for _ in range(changes):
        table, key, row = PROXY.churn(rng, NODES)
        config[table][key] = REGISTRY[table].model.model_validate(row).model_dump(mode="json")
    return config


def _state_machine(config: dict[str, dict[str, Any]]) -> StateMachine:
    sm = StateMachine(references=REGISTRY.references)
    index = 0
    for table in ("listeners", "pools", "pool_members", "routes"):  # parents first
        for key, row in config[table].items():
            index += 1
            result = sm.apply(cmds.put(f"tables/{table}/{key}", row, request_id=f"r{index}"), index)
            assert result["status"] == "ok", result
    return sm


@pytest.mark.parametrize("seed", range(100))
def test_proxy_model_agrees_with_the_product(seed: int) -> None:
    rng = random.Random(seed)
    config = _config(rng, rng.randrange(40))
    sm = _state_machine(config)
    for node in NODES:
        tables = build_blades(proxy_app, REGISTRY, node)["proxy"]
        assert set(tables) == set(PROXY.blade_tables)
        for name, table in tables.items():
            desired = table.desired_all(sm)
            assert desired == PROXY.project_table(config, node, name), (node, name)
            for key, row in desired.items():
                table.tamper(key, row)
        for _ in range(10):
            probe = PROXY.probe(rng)
            got = route_request(tables, probe.value)
            want = PROXY.decide(config, ("proxy", node, *(probe.value[k] for k in ("listener", "host", "path"))))
            assert PROXY.acceptable(got, want), (node, probe, got, want)


def _log(config: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [(t, k, r) for t in ("listeners", "pools", "pool_members", "routes") for k, r in config[t].items()]
    return [{"revision": i, "at": 0.0, "key": f"tables/{t}/{k}", "row": r} for i, (t, k, r) in enumerate(rows, 1)]


def test_checkers_judge_a_proxy_history() -> None:
    config = _config(random.Random(1), 0)
    log = _log(config)
    revision = len(log)
    value = {"listener": "l0", "host": "a.example", "path": "/api/x"}
    (right,) = PROXY.decide(config, ("proxy", "n1", "l0", "a.example", "/api/x"))
    assert right["action"] == "forward" and right["route"] == "r1"

    def probe(result: dict[str, Any], invoke: float = 1.0) -> dict[str, Any]:
        return {"id": 1, "kind": "dataplane", "f": "proxy", "key": "k", "value": value, "node": "n1",
                "invoke": invoke, "complete": invoke + 0.01, "outcome": "ok", "result": result}  # fmt: skip

    good = check_dataplane([probe({**right, "revision": revision})], log, [], model=PROXY)
    assert good.status == "pass", good.to_dict()
    wrong = check_dataplane([probe({**right, "pool": "p2", "revision": revision})], log, [], model=PROXY)
    assert wrong.status == "fail" and wrong.violations[0]["type"] == "wrong_answer"
    window = [{"node": "n1", "table": "members", "start": 0.0, "end": None}]
    served = check_dataplane([probe({**right, "revision": revision})], log, window, model=PROXY)
    assert served.status == "fail" and served.violations[0]["type"] == "served_while_failed"

    blades = {
        n: {t: {"revision": revision, "rows": PROXY.project_table(config, n, t)} for t in PROXY.blade_tables}
        for n in NODES
    }
    assert check_convergence(blades, config, revision, model=PROXY).status == "pass"
    blades["n2"]["routes"]["rows"] = {}
    drifted = check_convergence(blades, config, revision, model=PROXY)
    assert drifted.status == "fail" and drifted.violations[0]["type"] == "table_differs"
