"""The second shipped app, ``apps.proxy`` (a reverse-proxy appliance), on a real
three-node cluster: resync (full and incremental, through a join), references checked in
the state machine, ``wait=applied``, fencing and the guard, the data plane, and
snapshot/restore, all for tables rdbsync's core knows nothing about."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster import Cluster, http, running_cluster, wait_for

pytestmark = pytest.mark.integration

APP = ["--app", "apps.proxy:app"]


@pytest.fixture
def proxy(tmp_path: Any) -> Iterator[Cluster]:
    env = {"RDBSYNC_AUDIT_INTERVAL": "0.5"}
    with running_cluster(str(tmp_path), 3, env=env, extra_args=[*APP, "--fault-injection"]) as c:
        yield c


def put(c: Cluster, nid: str, table: str, key: str, row: dict[str, Any]) -> Any:
    r = http("PUT", f"{c.url(nid)}/v1/tables/{table}/{key}?wait=applied&timeout=10", row)
    assert r.status == 200, r.body
    assert {n["outcome"] for n in r.body["nodes"].values()} == {"applied"}, r.body
    return r.body


def blade(c: Cluster, nid: str, table: str) -> dict[str, Any]:
    r = http("GET", f"{c.url(nid)}/v1/blades/proxy/{table}")
    assert r.status == 200, r.body
    rows: dict[str, Any] = r.body["rows"]
    return rows


def route(c: Cluster, nid: str, listener: str, host: str, path: str) -> Any:
    return http("GET", f"{c.url(nid)}/v1/data/proxy/route?listener={listener}&host={host}&path={path}")


def configure(c: Cluster) -> None:
    put(c, "n1", "listeners", "web", {"name": "web", "address": "10.0.0.10", "port": 443, "home_node": "n1"})
    put(c, "n2", "pools", "api", {"name": "api"})
    put(c, "n3", "pools", "static", {"name": "static", "algorithm": "least_conn"})
    put(c, "n1", "pool_members", "api:a1", {"pool": "api", "name": "a1", "address": "10.1.0.1", "port": 8080})
    member = {"pool": "api", "name": "a2", "address": "10.1.0.2", "port": 8080, "enabled": False}
    put(c, "n1", "pool_members", "api:a2", member)
    put(c, "n2", "pool_members", "static:s1", {"pool": "static", "name": "s1", "address": "10.2.0.1", "port": 80})
    put(c, "n2", "routes", "web:api", {"listener": "web", "name": "api", "pool": "api", "path_prefix": "/api"})
    put(c, "n3", "routes", "web:root", {"listener": "web", "name": "root", "pool": "static"})


def test_proxy_tables_project_per_node_and_answer_the_data_plane(proxy: Cluster) -> None:
    c = proxy
    for nid in c.nodes:
        assert c.status(nid)["app"] == {"name": "proxy", "version": "1.0", "digest": c.status(nid)["app"]["digest"]}
    assert set(http("GET", f"{c.url('n1')}/v1/tables").body["tables"]) == {
        "listeners",
        "pools",
        "pool_members",
        "routes",
    }
    configure(c)
    # Homed on n1: only n1's proxy serves the listener and its routes (with the bind address).
    assert set(blade(c, "n1", "listeners")) == {"web"} and blade(c, "n2", "listeners") == {}
    assert blade(c, "n1", "routes")["web:api"]["bind"] == "10.0.0.10:443" and blade(c, "n3", "routes") == {}
    assert set(blade(c, "n2", "members")) == {"api:a1", "static:s1"}  # a2 is disabled
    answer = route(c, "n1", "web", "shop.example", "/api/v1/cart")
    assert answer.status == 200, answer.body
    assert answer.body["action"] == "forward" and answer.body["route"] == "api"
    assert answer.body["upstreams"] == [{"address": "10.1.0.1:8080", "weight": 1}]
    assert answer.body["revision"] == int(answer.headers["X-Rdb-Revision"]) >= 9
    assert route(c, "n1", "web", "shop.example", "/index.html").body["pool"] == "static"
    assert route(c, "n2", "web", "shop.example", "/api").body["action"] == "reject"  # not homed on n2
    assert route(c, "n1", "web", "x", "relative").status == 422
    assert route(c, "n1", "web", "x", "").status == 422  # a required parameter is missing

    # A change of the joined parent re-projects its children incrementally: move the listener.
    put(c, "n3", "listeners", "web", {"name": "web", "address": "10.0.0.20", "port": 443, "home_node": "n2"})
    assert blade(c, "n1", "routes") == {} and blade(c, "n2", "routes")["web:root"]["bind"] == "10.0.0.20:443"
    assert route(c, "n2", "web", "a", "/").body["action"] == "forward"
    for nid in c.nodes:
        assert all(t["drift_count"] == 0 for t in c.status(nid)["tables"].values()), c.status(nid)["tables"]

    # References are the state machine's: a missing parent is 422, a referenced one 409.
    bad = http("PUT", f"{c.url('n1')}/v1/tables/routes/web:x", {"listener": "web", "name": "x", "pool": "ghost"})
    assert bad.status == 422 and bad.body["error"]["code"] == "missing_reference"
    busy = http("DELETE", f"{c.url('n1')}/v1/tables/pools/api")
    assert busy.status == 409 and busy.body["error"]["code"] == "still_referenced"
    schema = http("PUT", f"{c.url('n1')}/v1/tables/listeners/x", {"name": "x", "address": "nope", "port": 1})
    assert schema.status == 422 and schema.body["error"]["code"] == "schema"


def test_proxy_fencing_guard_and_manual_resync(proxy: Cluster) -> None:
    c = proxy
    configure(c)
    assert http("GET", f"{c.url('n1')}/v1/guard/healthcheck").status == 200
    fault = http("POST", f"{c.url('n1')}/v1/debug/faults", {"table": "members", "mode": "error"})
    assert fault.status == 200, fault.body

    def fenced() -> bool:
        r = route(c, "n1", "web", "a", "/")
        return r.status == 503 and r.body["error"]["code"] == "fenced"

    wait_for(fenced, 10, "n1's proxy fenced by its failed members table")
    fences = {f["protocol"]: f for f in c.status("n1")["fences"]}
    assert fences["proxy"]["table"] == "members" and fences["healthcheck"]["kind"] == "application"
    assert http("GET", f"{c.url('n1')}/v1/guard/healthcheck").status == 503
    assert http("GET", f"{c.url('n2')}/v1/guard/healthcheck").status == 200  # other nodes are unaffected
    # wait=applied reports the fenced node instead of waiting for it.
    r = http("PUT", f"{c.url('n2')}/v1/tables/pools/spare?wait=applied&timeout=5", {"name": "spare"})
    assert r.status == 200 and r.body["nodes"]["n1"]["outcome"] == "fenced", r.body
    assert http("DELETE", f"{c.url('n1')}/v1/debug/faults").status == 200
    wait_for(lambda: route(c, "n1", "web", "a", "/").status == 200, 10, "n1's proxy unfenced")
    resync = http("POST", f"{c.url('n1')}/v1/resync?table=routes")
    assert resync.status == 200 and resync.body["results"][0]["table"] == "routes"


def test_proxy_snapshot_restore_resyncs_every_node(proxy: Cluster) -> None:
    c = proxy
    configure(c)
    with urllib.request.urlopen(f"{c.url('n2')}/v1/snapshot", timeout=10) as resp:
        backup = resp.read()
    put(c, "n1", "routes", "web:late", {"listener": "web", "name": "late", "pool": "api", "path_prefix": "/late"})
    assert "web:late" in blade(c, "n1", "routes")
    restored = http("POST", f"{c.url('n3')}/v1/restore", raw=backup)
    assert restored.status == 200, restored.body
    for nid in c.nodes:
        wait_for(lambda nid=nid: "web:late" not in blade(c, nid, "routes"), 10, f"{nid} restored")
    assert set(blade(c, "n1", "routes")) == {"web:api", "web:root"}
    wait_for(lambda: route(c, "n1", "web", "a", "/late").body.get("pool") == "static", 10, "restored route")
