"""Agents: real daemon processes (chaos/agent_daemon.py, embedding
``rdbsync.agent.Agent``) against a real three-node cluster running ``apps.proxy``.

Each node expects agent ``edge`` holding blade table ``routes`` (``--agent edge=routes``):
consumer ``proxy`` depends on ``routes`` and so on the agent; ``healthcheck`` does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster import REPO, Cluster, free_ports, http, wait_for

pytestmark = pytest.mark.integration

ARGS = ["--app", "apps.proxy:app", "--agent", "edge=routes", "--agent-timeout", "1"]


class Daemons:
    def __init__(self, c: Cluster, base: str, fail_key: str | None = None) -> None:
        self.c = c
        self.base = base
        self.fail_key = fail_key
        self.ports = dict(zip(c.nodes, free_ports(len(c.nodes)), strict=True))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, nid: str) -> None:
        argv = [sys.executable, "-m", "chaos.agent_daemon", "--node", self.c.url(nid)]
        argv += ["--name", "edge", "--tables", "routes", "--port", str(self.ports[nid]), "--grace", "1"]
        if self.fail_key:
            argv += ["--fail-key", self.fail_key]
        with open(os.path.join(self.base, f"agent-{nid}.log"), "ab") as log:  # the child keeps its own copy
            self.procs[nid] = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, nid: str) -> None:
        proc = self.procs.pop(nid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)

    def state(self, nid: str) -> dict[str, Any]:
        r = http("GET", f"http://127.0.0.1:{self.ports[nid]}/", timeout=2)
        assert r.status == 200, r.body
        body: dict[str, Any] = r.body
        return body

    def close(self) -> None:
        for nid in list(self.procs):
            self.kill(nid)


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[tuple[Cluster, Daemons]]:
    # A node is ready only once its agent has loaded (proxy is fenced until then).
    c = Cluster(str(tmp_path), 3, extra_args=ARGS)
    daemons = Daemons(c, str(tmp_path), fail_key="poison")
    c.start()
    try:
        for nid in c.nodes:
            daemons.start(nid)
        c.wait_ready()
        yield c, daemons
    finally:
        daemons.close()
        c.close()


def put(c: Cluster, table: str, key: str, row: dict[str, Any]) -> Any:
    # The client waits longer than the server's wait=applied timeout, so a slow node shows
    # as the server's 504 naming the laggard, not as a client-side socket timeout.
    r = http("PUT", f"{c.url('n2')}/v1/tables/{table}/{key}?wait=applied&timeout=10", row, timeout=20)
    assert r.status == 200, r.body
    return r.body


def fenced(c: Cluster, nid: str) -> dict[str, str]:
    return {f["protocol"]: f["table"] for f in c.status(nid)["fences"]}


def configure(c: Cluster) -> None:
    for i, nid in enumerate(c.nodes):
        put(c, "listeners", f"l{nid}", {"name": f"l{nid}", "address": f"10.0.0.{i + 1}", "port": 80, "home_node": nid})
    put(c, "pools", "api", {"name": "api"})
    for nid in c.nodes:
        put(c, "routes", f"l{nid}:r1", {"listener": f"l{nid}", "name": "r1", "pool": "api"})


def converged(c: Cluster, d: Daemons, nid: str) -> bool:
    st = d.state(nid)
    blade = http("GET", f"{c.url(nid)}/v1/blades/proxy/routes").body["rows"]
    return bool(st["serving"]) and st["rows"] is not None and st["rows"].get("routes", {}) == blade


def first_answer_holds(d: Daemons, nid: str, route: str, within: float = 30.0) -> None:
    """Poll the daemon on ``nid`` until it serves again; its first serving answer must
    already hold ``route`` (written while its node was away)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        st = d.state(nid)
        if st["serving"]:
            assert route in st["rows"]["routes"], st
            return
        time.sleep(0.02)
    raise AssertionError(f"the agent on {nid} never served again")


def test_agents_converge_and_wait_applied_counts_them(cluster: tuple[Cluster, Daemons]) -> None:
    c, d = cluster
    configure(c)
    for nid in c.nodes:
        wait_for(lambda nid=nid: converged(c, d, nid), 15, f"agent on {nid} converged")
        assert fenced(c, nid) == {}
        agent = c.status(nid)["agents"]["edge"]
        assert agent["state"] == "ok" and agent["tables"] == ["routes"], agent
    # wait=applied answers only once every agent reflects the write: right after it, the
    # daemon on n1 holds the new route.
    body = put(c, "routes", "ln1:r2", {"listener": "ln1", "name": "r2", "pool": "api"})
    assert {n["outcome"] for n in body["nodes"].values()} == {"applied"}, body
    assert "ln1:r2" in d.state("n1")["held"]["routes"]
    metrics = http("GET", f"{c.url('n1')}/metrics").body
    assert 'rdb_agent_ok{agent="edge"} 1' in metrics


def test_callback_failure_fences_only_dependents_on_that_node(cluster: tuple[Cluster, Daemons]) -> None:
    c, d = cluster
    configure(c)
    for nid in c.nodes:
        wait_for(lambda nid=nid: converged(c, d, nid), 15, f"agent on {nid} converged")
    # A route n1's daemon cannot apply: only n1 holds it (its listener is homed there).
    r = http("PUT", f"{c.url('n2')}/v1/tables/routes/ln1:poison", {"listener": "ln1", "name": "poison", "pool": "api"})
    assert r.status == 200, r.body
    wait_for(lambda: fenced(c, "n1").get("proxy") == "agent:edge", 5, "proxy fenced on n1 by the agent")
    assert "healthcheck" not in fenced(c, "n1")  # it does not depend on routes
    assert fenced(c, "n2") == {} and fenced(c, "n3") == {}
    st = d.state("n1")
    assert st["serving"] is False and "poison" in st["why"], st
    assert d.state("n2")["serving"] is True
    agent = c.status("n1")["agents"]["edge"]
    assert agent["state"] == "failed" and agent["failures"][0]["key"] == "ln1:poison", agent
    events = http("GET", f"{c.url('n1')}/v1/events").body["events"]
    assert any(e["type"] == "resync_failed" and e.get("table") == "agent:edge" for e in events), events
    # The bad row goes: a clean resync of the agent lifts the fence.
    assert http("DELETE", f"{c.url('n2')}/v1/tables/routes/ln1:poison").status == 200
    wait_for(lambda: "proxy" not in fenced(c, "n1"), 10, "proxy unfenced on n1")
    wait_for(lambda: converged(c, d, "n1"), 10, "agent on n1 serving again")
    events = http("GET", f"{c.url('n1')}/v1/events").body["events"]
    assert any(e["type"] == "unfenced" and e.get("protocol") == "proxy" for e in events)


def test_agent_that_dies_fences_its_consumer_and_a_new_one_lifts_it(cluster: tuple[Cluster, Daemons]) -> None:
    c, d = cluster
    configure(c)
    wait_for(lambda: converged(c, d, "n3"), 15, "agent on n3 converged")
    d.kill("n3")
    t0 = time.monotonic()
    wait_for(lambda: fenced(c, "n3").get("proxy") == "agent:edge", 5, "proxy fenced on n3")
    assert time.monotonic() - t0 < 3.0
    assert c.status("n3")["agents"]["edge"]["state"] == "lost"
    assert fenced(c, "n1") == {}
    d.start("n3")
    wait_for(lambda: converged(c, d, "n3") and fenced(c, "n3") == {}, 15, "a restarted agent lifts the fence")


def test_node_kill_and_restart_agent_stops_serving_and_converges(cluster: tuple[Cluster, Daemons]) -> None:
    c, d = cluster
    configure(c)
    wait_for(lambda: converged(c, d, "n1"), 15, "agent on n1 converged")
    c.signal("n1", signal.SIGKILL)
    # Cut off from its node, the daemon stops serving by itself within its grace.
    wait_for(lambda: d.state("n1")["serving"] is False, 5, "agent on n1 fails closed")
    r = http("PUT", f"{c.url('n2')}/v1/tables/routes/ln1:late", {"listener": "ln1", "name": "late", "pool": "api"})
    assert r.status == 200, r.body
    assert d.state("n1")["serving"] is False
    c.start("n1")
    # Never serving from the old config: once it serves, it has the row written while its node was down.
    first_answer_holds(d, "n1", "ln1:late")
    wait_for(lambda: converged(c, d, "n1"), 10, "agent on n1 converged after the restart")


def test_a_restore_makes_every_agent_reload_and_converge(cluster: tuple[Cluster, Daemons]) -> None:
    c, d = cluster
    configure(c)
    for nid in c.nodes:
        wait_for(lambda nid=nid: converged(c, d, nid), 15, f"agent on {nid} converged")
    with urllib.request.urlopen(f"{c.url('n2')}/v1/snapshot", timeout=10) as resp:
        backup = resp.read()
    put(c, "routes", "ln1:late", {"listener": "ln1", "name": "late", "pool": "api"})
    wait_for(lambda: "ln1:late" in d.state("n1")["held"]["routes"], 10, "the late route reached n1's agent")
    loads = {nid: c.status(nid)["agents"]["edge"]["loads"] for nid in c.nodes}
    assert http("POST", f"{c.url('n3')}/v1/restore", raw=backup).status == 200
    # The snapshot load ends every stream with "reload"; each agent loads again and
    # diffs: the route written after the snapshot goes.
    for nid in c.nodes:
        wait_for(lambda nid=nid: c.status(nid)["agents"]["edge"]["loads"] > loads[nid], 15, f"{nid} agent reloaded")
        wait_for(lambda nid=nid: converged(c, d, nid), 15, f"agent on {nid} converged after the restore")
    assert "ln1:late" not in d.state("n1")["rows"]["routes"]


def test_node_pause_past_its_grace_agent_never_serves_the_config_from_before(
    cluster: tuple[Cluster, Daemons],
) -> None:
    # A pause shorter than the consumer's quorum grace (the node's default, 5 s) may keep
    # serving last-known config (guarantee 5); a longer one must not: when the node wakes,
    # neither it nor its agent may answer from the config it had before the pause.
    c, d = cluster
    configure(c)
    wait_for(lambda: converged(c, d, "n1"), 15, "agent on n1 converged")
    paused = time.monotonic()
    c.signal("n1", signal.SIGSTOP)
    try:
        # Its node answers nothing (the connection stays open): the daemon stops serving
        # by itself within its grace.
        wait_for(lambda: d.state("n1")["serving"] is False, 5, "agent on n1 fails closed while n1 is paused")
        r = http(
            "PUT", f"{c.url('n2')}/v1/tables/routes/ln1:paused", {"listener": "ln1", "name": "paused", "pool": "api"}
        )
        assert r.status == 200, r.body
        time.sleep(max(0.0, paused + 6.5 - time.monotonic()))  # the fault: a pause of 6.5 s
        assert d.state("n1")["serving"] is False
    finally:
        c.signal("n1", signal.SIGCONT)
    first_answer_holds(d, "n1", "ln1:paused")  # the first answer after the pause has the row written during it
    wait_for(lambda: converged(c, d, "n1"), 10, "agent on n1 converged after the pause")
