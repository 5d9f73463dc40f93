"""nginx end to end: every node of a real ``apps.proxy`` cluster renders its blade tables
into its own nginx (Debian's package, on loopback ports picked here) through a file sink
with ``apps/proxy/nginx.conf.j2``, ``nginx -t`` as verify and ``nginx -s reload`` as
reload. Requests through nginx follow committed config; a config nginx rejects fences
``proxy`` on that node and keeps the last good config serving; killing nginx fences."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster import Cluster, free_ports, http, wait_for
from tests.nginx import backend, find_nginx, through
from tests.nginx import start as start_nginx
from tests.nginx import stop as stop_nginx

pytestmark = pytest.mark.integration


def nginx_binary() -> str:
    found, problem = find_nginx()
    if found is None:
        pytest.skip(f"nginx is not installed and cannot be installed here: {problem}")
    return found


class Backends:
    """HTTP servers answering ``backend=<name>``."""

    def __init__(self, names: list[str]) -> None:
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.servers = [backend(name, port) for name, port in self.ports.items()]

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def setup(tmp_path: Any) -> Iterator[tuple[Cluster, dict[str, int], dict[str, str], Backends, str]]:
    nginx = nginx_binary()
    c = Cluster(str(tmp_path), 3, extra_args=["--app", "apps.proxy:app"])
    listen = dict(zip(c.nodes, free_ports(len(c.nodes)), strict=True))
    dirs = {}
    for nid, node in c.nodes.items():
        d = str(tmp_path / f"nginx-{nid}")
        node.extra_args = ["--sink-config", start_nginx(d, nginx)]
        dirs[nid] = d
    backends = Backends(["a1", "s1"])
    c.start()
    try:
        c.wait_ready()
        yield c, listen, dirs, backends, nginx
    finally:
        c.close()
        backends.close()
        for d in dirs.values():
            stop_nginx(d, nginx)


def put(c: Cluster, table: str, key: str, row: dict[str, Any]) -> None:
    r = http("PUT", f"{c.url('n2')}/v1/tables/{table}/{key}?wait=applied&timeout=10", row)
    assert r.status == 200, r.body


def fenced(c: Cluster, nid: str) -> dict[str, str]:
    return {f["protocol"]: f["table"] for f in c.status(nid)["fences"]}


def test_nginx_follows_committed_config_rejected_config_fences_and_a_dead_nginx_fences(setup: Any) -> None:
    c, listen, dirs, backends, nginx = setup
    for nid in c.nodes:
        row = {"name": f"l{nid}", "address": "127.0.0.1", "port": listen[nid], "home_node": nid}
        put(c, "listeners", f"l{nid}", row)
    put(c, "pools", "api", {"name": "api"})
    put(c, "pools", "static", {"name": "static"})
    member = {"pool": "api", "name": "a1", "address": "127.0.0.1", "port": backends.ports["a1"]}
    put(c, "pool_members", "api:a1", member)
    member = {"pool": "static", "name": "s1", "address": "127.0.0.1", "port": backends.ports["s1"]}
    put(c, "pool_members", "static:s1", member)
    for nid in c.nodes:
        put(c, "routes", f"l{nid}:root", {"listener": f"l{nid}", "name": "root", "pool": "api"})
    for nid in c.nodes:
        wait_for(lambda nid=nid: through(listen[nid], "/x") == "backend=a1", 10, f"nginx on {nid} routes / to api")
    # A new route, committed once, reaches every node's nginx.
    for nid in c.nodes:
        route = {"listener": f"l{nid}", "name": "st", "pool": "static", "path_prefix": "/static"}
        put(c, "routes", f"l{nid}:st", route)
    for nid in c.nodes:
        wait_for(lambda nid=nid: through(listen[nid], "/static/a") == "backend=s1", 10, f"{nid} /static")
    assert all(fenced(c, nid) == {} for nid in c.nodes)

    # A duplicate location: nginx -t rejects it on n1 only.
    dup = {"listener": "ln1", "name": "dup", "pool": "api", "path_prefix": "/static"}
    assert http("PUT", f"{c.url('n2')}/v1/tables/routes/ln1:dup", dup).status == 200
    wait_for(lambda: fenced(c, "n1").get("proxy") == "agent:nginx", 10, "proxy fenced on n1")
    assert fenced(c, "n2") == {} and fenced(c, "n3") == {}  # on that node only
    assert "verify command failed" in c.status("n1")["agents"]["nginx"]["error"]
    assert through(listen["n1"], "/static/a") == "backend=s1"  # the last good config keeps serving
    with open(os.path.join(dirs["n1"], "conf.d", "rdbsync.conf")) as f:
        assert "dup" not in f.read()  # and stays in force on disk
    # A good config lifts it.
    assert http("DELETE", f"{c.url('n2')}/v1/tables/routes/ln1:dup").status == 200
    wait_for(lambda: "proxy" not in fenced(c, "n1"), 10, "proxy unfenced on n1")

    # nginx dies on n3: noticed, fenced; back, unfenced.
    with open(os.path.join(dirs["n3"], "nginx.pid")) as f:
        os.kill(int(f.read().strip()), signal.SIGTERM)
    wait_for(lambda: fenced(c, "n3").get("proxy") == "agent:nginx", 5, "a dead nginx fences proxy on n3")
    assert fenced(c, "n1") == {}
    d = dirs["n3"]
    wait_for(lambda: not os.path.exists(os.path.join(d, "nginx.pid")), 5, "nginx on n3 gone")
    subprocess.run([nginx, "-p", d, "-c", f"{d}/nginx.conf"], check=True, capture_output=True)
    wait_for(lambda: fenced(c, "n3") == {}, 10, "proxy unfenced on n3 once nginx is back")
    assert through(listen["n3"], "/static/a") == "backend=s1"
