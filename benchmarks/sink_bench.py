"""File sink -> nginx serving the new config (issue 11, point 4's benchmark), on a fresh
three-node cluster running the proxy app.

    scripts/bench-sink [--trials 30]

Every node renders its proxy blade tables into its own nginx (Debian's package,
installed when missing as root; the set-up is tests/nginx.py's, shared with
tests/integration/test_nginx.py) through a file sink: ``apps/proxy/nginx.conf.j2``,
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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.nginx: the test's nginx set-up

from bench import BenchError, LocalCluster, http, pct, progress

from node.launcher import port_block
from tests.nginx import backend, find_nginx, through
from tests.nginx import start as start_nginx
from tests.nginx import stop as stop_nginx


def nginx_binary() -> str:
    found, problem = find_nginx()
    if found is None:
        raise BenchError(f"nginx is not installed and cannot be installed here: {problem}")
    return found


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
                sink = start_nginx(d, nginx)
                dirs[node.id] = d
                node.extra_args = [*node.extra_args, "--sink-config", sink]
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
                stop_nginx(d, nginx)
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
