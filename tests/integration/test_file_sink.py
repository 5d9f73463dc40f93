"""File sinks on a real three-node cluster running ``apps.proxy``: every node renders its
``routes`` blade table into its own file (JSON), verifies and "reloads" it (the reload
copies the file where the daemon would read it), and runs fence/unfence hooks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster import Cluster, http, wait_for

pytestmark = pytest.mark.integration

SINK = """
[[sink]]
name = "cfg"
tables = ["routes"]
path = "routes.json"
format = "json"
verify = '! grep -q poison "$RDBSYNC_PATH"'
reload = 'cp "$RDBSYNC_PATH" daemon.json'
on_fence = 'echo "$RDBSYNC_FENCED" > fenced.flag'
on_unfence = 'rm -f fenced.flag'
"""


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[Cluster]:
    c = Cluster(str(tmp_path), 3, extra_args=["--app", "apps.proxy:app"])
    for nid, node in c.nodes.items():
        d = tmp_path / f"sink-{nid}"
        d.mkdir()
        (d / "sink.toml").write_text(SINK)
        node.extra_args = ["--sink-config", str(d / "sink.toml")]
    c.start()
    try:
        c.wait_ready()
        yield c
    finally:
        c.close()


def sink_dir(c: Cluster, nid: str) -> str:
    return os.path.join(c.base_dir, f"sink-{nid}")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def put(c: Cluster, table: str, key: str, row: dict[str, Any]) -> None:
    r = http("PUT", f"{c.url('n2')}/v1/tables/{table}/{key}?wait=applied&timeout=10", row)
    assert r.status == 200, r.body


def fenced(c: Cluster, nid: str) -> dict[str, str]:
    return {f["protocol"]: f["table"] for f in c.status(nid)["fences"]}


def test_sink_renders_verifies_reloads_and_a_failing_verify_fences_keeping_the_old_file(cluster: Cluster) -> None:
    c = cluster
    for i, nid in enumerate(c.nodes):
        put(c, "listeners", f"l{nid}", {"name": f"l{nid}", "address": f"10.0.0.{i + 1}", "port": 80, "home_node": nid})
    put(c, "pools", "api", {"name": "api"})
    for nid in c.nodes:
        put(c, "routes", f"l{nid}:r1", {"listener": f"l{nid}", "name": "r1", "pool": "api"})

    def rendered(nid: str) -> bool:
        blade = http("GET", f"{c.url(nid)}/v1/blades/proxy/routes").body["rows"]
        want = {"routes": blade}
        d = sink_dir(c, nid)
        return read_json(os.path.join(d, "routes.json")) == want and read_json(os.path.join(d, "daemon.json")) == want

    for nid in c.nodes:
        wait_for(lambda nid=nid: rendered(nid), 10, f"sink on {nid} rendered and reloaded")
        assert c.status(nid)["agents"]["cfg"]["state"] == "ok"
        assert fenced(c, nid) == {}
    good = read_json(os.path.join(sink_dir(c, "n1"), "routes.json"))
    # A config the verify command rejects, only on n1.
    put_raw = http(
        "PUT", f"{c.url('n2')}/v1/tables/routes/ln1:poison", {"listener": "ln1", "name": "poison", "pool": "api"}
    )
    assert put_raw.status == 200
    wait_for(lambda: fenced(c, "n1").get("proxy") == "agent:cfg", 5, "proxy fenced on n1 by its sink")
    assert "healthcheck" not in fenced(c, "n1")
    assert fenced(c, "n2") == {} and fenced(c, "n3") == {}
    d1 = sink_dir(c, "n1")
    assert read_json(os.path.join(d1, "routes.json")) == good  # the previous file stays in force
    assert read_json(os.path.join(d1, "daemon.json")) == good  # and was never reloaded
    wait_for(lambda: os.path.exists(os.path.join(d1, "fenced.flag")), 5, "the fence hook ran")
    with open(os.path.join(d1, "fenced.flag")) as f:
        assert f.read().strip() == "proxy"
    agent = c.status("n1")["agents"]["cfg"]
    assert agent["state"] == "failed" and "verify command failed" in agent["error"], agent
    # A good config lifts it.
    assert http("DELETE", f"{c.url('n2')}/v1/tables/routes/ln1:poison").status == 200
    wait_for(lambda: "proxy" not in fenced(c, "n1"), 10, "proxy unfenced on n1")
    wait_for(lambda: not os.path.exists(os.path.join(d1, "fenced.flag")), 5, "the unfence hook ran")
    put(c, "routes", "ln1:r2", {"listener": "ln1", "name": "r2", "pool": "api"})
    wait_for(lambda: rendered("n1"), 10, "sink on n1 renders again")
