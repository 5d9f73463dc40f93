"""File sink -> nginx serving the new config (issue 11, point 4's benchmark), on a fresh
three-node cluster running the proxy app.

    scripts/bench-sink [--trials 30]

Every node renders its proxy blade tables into its own nginx (Debian's package,
installed when missing as root) through a file sink: ``apps/proxy/nginx.conf.j2``,
``nginx -t`` to verify, ``nginx -s reload`` to reload. Each trial commits one new route
per node (a new path prefix on the node's listener, to a second pool) and times, for
each, from the write's acknowledgement to the first request through that node's nginx
that reaches the new route's backend (polled every 2 ms). Prints p50/p99/max over all
samples. There is no bar in the issue; the figure goes in the README.

Exit status: 0 ran, 2 cannot run (no nginx, the cluster did not come up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import REPO, BenchError, LocalCluster, http, pct, progress

from node.launcher import port_block

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
    """nginx's path, installing Debian's nginx-light when missing (as root)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        progress("installing nginx-light")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq", "update"], env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq", "install", "-y", "nginx-light"],
            env=env,
            capture_output=True,
        )
        found = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else shutil.which("nginx")
    if found is None:
        raise BenchError("nginx is not installed and cannot be installed here (needs root and apt-get)")
    return found


def backend(name: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server on loopback answering ``backend=<name>``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"backend={name}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def through(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def put(url: str, table: str, key: str, row: dict[str, Any]) -> None:
    status, body = http("PUT", f"{url}/v1/tables/{table}/{key}", row)
    if status != 200:
        raise BenchError(f"PUT {table}/{key}: {status} {body}")


def until_served(port: int, path: str, want: str, limit: float = 30.0) -> float:
    """Seconds until nginx on ``port`` answers ``want`` for ``path``, polling every 2 ms."""
    t0 = time.perf_counter()
    while through(port, path) != want:
        if time.perf_counter() - t0 > limit:
            raise BenchError(f"nginx on port {port} did not serve {path} within {limit}s")
        time.sleep(0.002)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args(argv)
    nginx = nginx_binary()
    template = os.path.join(REPO, "apps", "proxy", "nginx.conf.j2")
    with tempfile.TemporaryDirectory(prefix="rdbsync-sink-") as tmp:
        cluster = LocalCluster(os.path.join(tmp, "c"), node_args=["--app", "apps.proxy:app"])
        os.makedirs(cluster.base_dir, exist_ok=True)
        base = port_block(5, "127.0.0.1")
        listen = {node.id: base + i for i, node in enumerate(cluster.nodes)}
        servers = [backend("api", base + 3), backend("static", base + 4)]
        dirs = {}
        try:
            for node in cluster.nodes:
                d = os.path.join(tmp, f"nginx-{node.id}")
                for sub in ("conf.d", "tmp", "logs"):
                    os.makedirs(os.path.join(d, sub))
                Path(d, "nginx.conf").write_text(NGINX_CONF.format(d=d))
                Path(d, "sink.toml").write_text(SINK.format(d=d, nginx=nginx, template=template))
                subprocess.run([nginx, "-p", d, "-c", f"{d}/nginx.conf"], check=True, capture_output=True)
                dirs[node.id] = d
                node.extra_args = [*node.extra_args, "--sink-config", os.path.join(d, "sink.toml")]
            cluster.start()
            cluster.wait_ready(30)
            url = cluster.nodes[0].url
            for nid, port in listen.items():
                put(
                    url,
                    "listeners",
                    f"l{nid}",
                    {"name": f"l{nid}", "address": "127.0.0.1", "port": port, "home_node": nid},
                )
            for i, pool in enumerate(("api", "static")):
                put(url, "pools", pool, {"name": pool})
                member = {"pool": pool, "name": "m", "address": "127.0.0.1", "port": base + 3 + i}
                put(url, "pool_members", f"{pool}:m", member)
            for nid in listen:
                put(url, "routes", f"l{nid}:root", {"listener": f"l{nid}", "name": "root", "pool": "api"})
            for port in listen.values():
                until_served(port, "/x", "backend=api")
            progress(f"nginx on every node serves; {args.trials} trials of one new route per node")
            samples: list[float] = []
            for trial in range(args.trials):
                for n, (nid, port) in enumerate(listen.items()):
                    route = {"listener": f"l{nid}", "name": f"t{trial}", "pool": "static", "path_prefix": f"/t{trial}"}
                    put(cluster.nodes[n].url, "routes", f"l{nid}:t{trial}", route)
                    samples.append(until_served(port, f"/t{trial}/x", "backend=static"))
                if (trial + 1) % 10 == 0:
                    progress(f"trials: {trial + 1}/{args.trials}")
        finally:
            cluster.stop()
            for server in servers:
                server.shutdown()
            for d in dirs.values():
                subprocess.run([nginx, "-s", "stop", "-p", d, "-c", f"{d}/nginx.conf"], capture_output=True)
    print(f"\n{'figure':<52} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    print(
        f"{'commit acknowledged -> nginx on its node serves it':<52} {len(samples):>5} "
        f"{pct(samples, 0.5) * 1000:>9.1f} {pct(samples, 0.99) * 1000:>9.1f} {max(samples) * 1000:>9.1f}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench-sink: {exc}", file=sys.stderr)
        sys.exit(2)
