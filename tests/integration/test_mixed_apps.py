"""A node that joins with a different app, or another version of it, never serves what it
projects: it fences every consumer with cause ``app_mismatch`` saying why and refuses
management writes (409), while the rest of the cluster keeps serving. A rolling upgrade
completes when every member has registered the new version: the leader then records it
and every node serves again."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.cluster import Cluster, http, wait_for

pytestmark = pytest.mark.integration


def causes(c: Cluster, nid: str) -> set[str]:
    return {f["cause"] for f in c.status(nid)["fences"]}


def serving(c: Cluster, nid: str) -> bool:
    return http("GET", f"{c.url(nid)}/v1/guard/nfs", timeout=2).status == 200


def restart(c: Cluster, nid: str, app: str) -> None:
    c.stop(nid)
    c.nodes[nid].extra_args = ["--app", app]
    c.start(nid)


def test_a_node_with_another_app_or_version_fences_itself(tmp_path: Any) -> None:
    c = Cluster(str(tmp_path), 3)
    try:
        c.start("n1")
        c.start("n2")
        c.wait_ready(nodes=["n1", "n2"])
        assert c.status("n1")["app"]["name"] == "ontap" and c.status("n1")["app"]["version"] == "1.0"

        c.nodes["n3"].extra_args = ["--app", "apps.proxy:app"]
        c.start("n3")
        wait_for(lambda: causes(c, "n3") == {"app_mismatch"}, 20, "n3 fenced for its app")
        fences = c.status("n3")["fences"]
        assert {f["protocol"] for f in fences} == {"proxy", "healthcheck"}
        assert "runs app proxy 1.0" in fences[0]["message"] and "cluster runs ontap 1.0" in fences[0]["message"]
        guard = http("GET", f"{c.url('n3')}/v1/guard/proxy")
        assert guard.status == 503 and guard.body["error"]["details"]["cause"] == "app_mismatch"
        write = http("PUT", f"{c.url('n3')}/v1/tables/pools/p", {"name": "p"})
        assert write.status == 409 and write.body["error"]["code"] == "app_mismatch"
        raw = http("PUT", f"{c.url('n3')}/v1/kv/tables/pools/p", {"value": {"name": "p"}})
        assert raw.status == 409 and raw.body["error"]["code"] == "app_mismatch"
        txn = {"compare": [], "success": [{"op": "delete", "key": "tables/pools/p"}], "failure": []}
        assert http("POST", f"{c.url('n3')}/v1/txn", txn).status == 409
        assert http("PUT", f"{c.url('n3')}/v1/kv/plain", {"value": 1}).status == 200  # not a table row
        assert http("GET", f"{c.url('n3')}/readyz").status == 503
        # The others keep serving, and /v1/cluster shows which app each member runs.
        assert serving(c, "n1") and serving(c, "n2")
        members = {m["id"]: m for m in http("GET", f"{c.url('n1')}/v1/cluster").body["nodes"]}
        assert members["n3"]["app"]["name"] == "proxy" and members["n1"]["app"]["name"] == "ontap"

        # Same app, another version: also refused, until every member runs it.
        restart(c, "n3", "tests.ontap_v2:app")
        wait_for(lambda: any("ontap 2.0" in f["message"] for f in c.status("n3")["fences"]), 20, "n3 fenced for 2.0")
        restart(c, "n1", "tests.ontap_v2:app")
        wait_for(lambda: causes(c, "n1") == {"app_mismatch"}, 20, "n1 fenced mid-upgrade")
        assert serving(c, "n2")  # the last node on 1.0 still serves
        restart(c, "n2", "tests.ontap_v2:app")
        for nid in c.nodes:
            wait_for(lambda nid=nid: serving(c, nid), 30, f"{nid} serving on 2.0")
            assert c.status(nid)["app"]["version"] == "2.0"
    finally:
        c.close()
