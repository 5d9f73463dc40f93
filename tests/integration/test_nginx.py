"""nginx end to end: every node of a real ``apps.proxy`` cluster renders its blade tables
into its own nginx (Debian's package, on loopback ports picked here) through a file sink
with ``apps/proxy/nginx.conf.j2``, ``nginx -t`` as verify and ``nginx -s reload`` as
reload. Requests through nginx follow committed config; a config nginx rejects fences
``proxy`` on that node and keeps the last good config serving; killing nginx fences."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.cluster import REPO, Cluster, free_ports, http, wait_for

pytestmark = pytest.mark.integration

NGINX_CONF = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/conf.d/*.conf;
}}
"""

SINK = """
[[sink]]
name = "nginx"
tables = ["listeners", "routes", "pools", "members"]
path = "conf.d/rdbsync.conf"
template = "{template}"
verify = "{nginx} -t -q -p {d} -c {d}/nginx.conf"
reload = "{nginx} -s reload -p {d} -c {d}/nginx.conf"
check = "kill -0 $(cat {d}/nginx.pid)"
check_interval = 0.2
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "-qq", "update"], ["apt-get", "-qq", "install", "-y", "nginx-light"]):
            subprocess.run([*cmd[:1], "-o", "DPkg::Lock::Timeout=300", *cmd[1:]], env=env, capture_output=True)
        found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        pytest.skip("nginx is not installed and cannot be installed here (needs root and apt-get)")
    return found


class Backends:
    """HTTP servers answering ``backend=<name>``."""

    def __init__(self, names: list[str]) -> None:
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.servers = []
        for name, port in self.ports.items():

            class Handler(BaseHTTPRequestHandler):
                backend = name

                def do_GET(self) -> None:
                    body = f"backend={self.backend}".encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *_: Any) -> None:
                    pass

            server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


def through(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return None


@pytest.fixture
def setup(tmp_path: Any) -> Iterator[tuple[Cluster, dict[str, int], dict[str, str], Backends, str]]:
    nginx = nginx_binary()
    c = Cluster(str(tmp_path), 3, extra_args=["--app", "apps.proxy:app"])
    listen = dict(zip(c.nodes, free_ports(len(c.nodes)), strict=True))
    dirs = {}
    template = os.path.join(REPO, "apps", "proxy", "nginx.conf.j2")
    for nid, node in c.nodes.items():
        d = str(tmp_path / f"nginx-{nid}")
        for sub in ("conf.d", "tmp", "logs"):
            os.makedirs(os.path.join(d, sub))
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(d=d))
        with open(os.path.join(d, "sink.toml"), "w") as f:
            f.write(SINK.format(d=d, nginx=nginx, template=template))
        subprocess.run([nginx, "-p", d, "-c", f"{d}/nginx.conf"], check=True, capture_output=True)
        node.extra_args = ["--sink-config", os.path.join(d, "sink.toml")]
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
            subprocess.run([nginx, "-s", "stop", "-p", d, "-c", f"{d}/nginx.conf"], capture_output=True)


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
