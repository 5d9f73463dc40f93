"""``chaos._checkers.check_agents``: what a data-plane daemon serves is judged against
the proxy model's projection of the config log at the revision the daemon reports."""

from __future__ import annotations

from typing import Any

from chaos._apps import PROXY
from chaos._checkers import check_agents

NODES = ["n1", "n2", "n3"]
BASE = PROXY.base_config(NODES)
LOG = [
    {"revision": i, "at": 0.0, "key": f"tables/{table}/{key}", "row": row}
    for i, (table, key, row) in enumerate(BASE, start=1)
]
R0 = len(LOG)
ROUTE_KEY, ROUTE = next((k, r) for t, k, r in BASE if t == "routes")
# At t=10, revision R0+3 changes one route (R0+1, R0+2: other keys, not in the log).
CHANGED = {**ROUTE, "path_prefix": "/changed"}
LOG_CHANGED = [*LOG, {"revision": R0 + 3, "at": 10.0, "key": f"tables/routes/{ROUTE_KEY}", "row": CHANGED}]


def config_at(log: list[dict[str, Any]], revision: int) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {t: {} for t in PROXY.management_tables}
    for e in log:
        if e["revision"] <= revision:
            _, table, key = e["key"].split("/", 2)
            config[table][key] = e["row"]
    return config


def home_of_route() -> str:
    listener = next(r for t, k, r in BASE if t == "listeners" and k == ROUTE["listener"])
    return str(listener["home_node"])


def served(node: str, revision: int, rows: dict[str, Any], invoke: float) -> dict[str, Any]:
    return {
        "kind": "agent",
        "f": "serve",
        "node": node,
        "invoke": invoke,
        "complete": invoke + 0.01,
        "outcome": "ok",
        "result": {"revision": revision, "rows": rows},
    }


def check(ops: list[dict[str, Any]], log: list[dict[str, Any]] = LOG_CHANGED, **kw: Any) -> Any:
    return check_agents(ops, log, kw.pop("windows", []), table="routes", model=PROXY, **kw)


def test_the_projection_at_the_reported_revision_passes() -> None:
    node = home_of_route()
    before = PROXY.project_table(config_at(LOG_CHANGED, R0), node, "routes")
    after = PROXY.project_table(config_at(LOG_CHANGED, R0 + 3), node, "routes")
    assert before != after and ROUTE_KEY in before
    result = check([served(node, R0, before, 1.0), served(node, R0 + 3, after, 11.0), served(node, R0 + 2, before, 11)])
    assert result.status == "pass", result.violations
    assert result.stats["checked"] == 3


def test_rows_that_fit_no_revision_they_claim_are_wrong() -> None:
    node = home_of_route()
    after = PROXY.project_table(config_at(LOG_CHANGED, R0 + 3), node, "routes")
    result = check([served(node, R0, after, 11.0)])  # new rows, stamped with the old revision
    assert [v["type"] for v in result.violations] == ["wrong_rows"]
    assert result.violations[0]["diff"]["different_count"] == 1


def test_another_nodes_rows_are_wrong() -> None:
    node = home_of_route()
    other = next(n for n in NODES if n != node)
    rows = PROXY.project_table(config_at(LOG_CHANGED, R0), node, "routes")
    assert rows != PROXY.project_table(config_at(LOG_CHANGED, R0), other, "routes")
    assert [v["type"] for v in check([served(other, R0, rows, 1.0)]).violations] == ["wrong_rows"]


def test_old_rows_past_the_staleness_bound_are_stale() -> None:
    node = home_of_route()
    before = PROXY.project_table(config_at(LOG_CHANGED, R0), node, "routes")
    assert check([served(node, R0, before, 14.0)]).status == "pass"  # within 5 s of the change
    result = check([served(node, R0, before, 16.0)])
    assert [v["type"] for v in result.violations] == ["stale_rows"]


def test_serving_while_the_nodes_table_has_failed_is_caught() -> None:
    node = home_of_route()
    rows = PROXY.project_table(config_at(LOG_CHANGED, R0), node, "routes")
    window = [{"node": node, "table": "routes", "start": 2.0, "end": 6.0}]
    other_table = [{"node": node, "table": "pools", "start": 2.0, "end": 6.0}]
    assert check([served(node, R0, rows, 2.5)], windows=window).status == "pass"  # within the slack
    assert [v["type"] for v in check([served(node, R0, rows, 4.0)], windows=window).violations] == [
        "served_while_failed"
    ]
    assert check([served(node, R0, rows, 4.0)], windows=other_table).status == "pass"


def test_a_drift_window_excuses_wrong_rows_and_counts_them() -> None:
    node = home_of_route()
    result = check([served(node, R0, {}, 3.0)], drift_windows=[{"node": node, "start": 2.0, "end": 6.0}])
    assert result.status == "pass"
    assert result.stats["excused_wrong_rows"] == 1


def test_an_incomplete_log_judges_nothing() -> None:
    node = home_of_route()
    result = check([served(node, R0, {}, 3.0)], log_complete_through=0)
    assert result.status != "pass"
    assert result.stats["unchecked_no_log"] == 1


def test_malformed_answers_and_failed_probes() -> None:
    bad = served("n1", R0, {}, 1.0) | {"result": {"rows": {}}}
    failed = served("n1", R0, {}, 1.0) | {"outcome": "fail", "result": {"status": 200}}
    result = check([bad, failed])
    assert [v["type"] for v in result.violations] == ["malformed_answer"]
    assert result.stats["outcome_fail"] == 1


def test_a_daemon_that_does_not_serve_the_final_config_after_healing_has_not_converged() -> None:
    node = home_of_route()
    want = {n: PROXY.project_table(config_at(LOG_CHANGED, R0 + 3), n, "routes") for n in NODES}
    good = {n: {"serving": True, "rows": rows} for n, rows in want.items()}
    assert check([], final={"want": want, "served": good}).status == "pass"
    stale = good | {node: {"serving": True, "rows": {}}}
    silent = good | {node: None}
    refusing = good | {node: {"serving": False, "rows": None}}
    for served in (stale, silent, refusing):
        result = check([], final={"want": want, "served": served})
        assert [(v["type"], v["node"]) for v in result.violations] == [("not_converged", node)]
