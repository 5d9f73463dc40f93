"""Latency figures on a fresh three-node cluster with fault injection:

1. commit -> blade table applied on all three nodes, p50/p99 (from the first node that
   applied the commit to the last node whose blade tables reflect it; wall clocks of
   processes on one host);
2. injected resync failure -> first 503 from the data plane, and fault cleared -> first
   200 again, p50/p99 over --trials trials.

    scripts/bench-latency [--writes 500] [--trials 50] [--app ontap|proxy] [--connection-per-write]

The writers keep one HTTP connection each to their node, as clients do (the rdbsync
client, the CLI, wrk in the other benchmarks); ``--connection-per-write`` opens a new one
for every write, as this benchmark did until 2026-12-07 (the connection churn costs the
nodes and the benchmark's own process CPU that the three nodes share with it on a small
machine, and shows in the tail).

``--app`` picks the app the nodes load and so the rows written and the data-plane call
probed: ONTAP writes vservers (on every node's N-blade) and fences nfs through
export_rules; the proxy app writes pools (on every node) and fences proxy through routes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BenchError, LocalCluster, fresh_cluster, http, pct, progress


@dataclass(frozen=True)
class Profile:
    """What the benchmark writes and probes for one app."""

    spec: str  # --app
    latency_table: str  # a table every node's blade tables project
    latency_row: Any  # i -> (key, row)
    setup: list[tuple[str, str, dict[str, Any]]]  # rows that make the probe answer 200 on n2
    probe: str  # data-plane path and query, on n2
    fault_table: str  # the blade table whose injected failure fences the probed consumer


PROFILES = {
    "ontap": Profile(
        "apps.ontap:app",
        "vservers",
        lambda i: (f"lat{i}", {"name": f"lat{i}", "protocols": ["nfs"]}),
        [
            ("vservers", "fv", {"name": "fv", "protocols": ["nfs"]}),
            ("aggregates", "fa", {"name": "fa", "home_node": "n2", "size_mb": 1}),
            (
                "volumes",
                "fvol",
                {"name": "fvol", "vserver": "fv", "aggregate": "fa", "size_mb": 1, "junction_path": "/fvol"},
            ),
            (
                "export_rules",
                "fv:default:1",
                {"vserver": "fv", "policy": "default", "index": 1, "client_match": "0.0.0.0/0", "access": "rw"},
            ),
        ],
        "/v1/data/nfs/mount?vserver=fv&path=/fvol&client=10.0.0.1",
        "export_rules",
    ),
    "proxy": Profile(
        "apps.proxy:app",
        "pools",
        lambda i: (f"lat{i}", {"name": f"lat{i}"}),
        [
            ("listeners", "l1", {"name": "l1", "address": "127.0.0.1", "port": 8080, "home_node": "n2"}),
            ("pools", "p1", {"name": "p1"}),
            ("pool_members", "p1:m1", {"pool": "p1", "name": "m1", "address": "127.0.0.1", "port": 9000}),
            ("routes", "l1:r1", {"listener": "l1", "name": "r1", "pool": "p1"}),
        ],
        "/v1/data/proxy/route?listener=l1&host=example.com&path=/",
        "routes",
    ),
}


def put_row(url: str, table: str, key: str, row: dict[str, Any], conn: HTTPConnection | None = None) -> int:
    """PUT one row through ``url``'s node: on ``conn`` (a connection to that node the
    caller keeps open between writes), or on a new connection when it is None."""
    if conn is None:
        status, body = http("PUT", f"{url}/v1/tables/{table}/{key}", row)
    else:
        conn.request("PUT", f"/v1/tables/{table}/{key}", json.dumps(row), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        status, body = reply.status, json.loads(reply.read() or b"null")
    if status != 200:
        raise BenchError(f"PUT {table}/{key}: {status} {body}")
    return int(body["revision"])


def commit_to_blade(
    cluster: LocalCluster, writes: int, writers: int, profile: Profile, *, connection_per_write: bool = False
) -> list[float]:
    urls = [n.url for n in cluster.nodes]
    start_revision = max(int(http("GET", f"{u}/v1/status")[1]["revision"]) for u in urls)
    counter = iter(range(writes))
    lock = threading.Lock()
    revisions: list[int] = []

    def writer(w: int) -> None:
        url = urls[w % 3]
        kept = None if connection_per_write else HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=5)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                key, row = profile.latency_row(i)
                rev = put_row(url, profile.latency_table, key, row, kept)
                with lock:
                    revisions.append(rev)
        finally:
            if kept is not None:
                kept.close()

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))
    last = max(revisions)

    def all_applied() -> bool:
        return all(
            min(t["applied_revision"] for t in http("GET", f"{u}/v1/status")[1]["tables"].values()) >= last
            for u in urls
        )

    deadline = time.monotonic() + 30
    while not all_applied():
        if time.monotonic() > deadline:
            raise BenchError("blade tables did not catch up within 30 s")
        time.sleep(0.05)
    timings = [http("GET", f"{u}/v1/debug/timings?since={start_revision}")[1] for u in urls]
    commit_at: dict[int, float] = {}
    for t in timings:
        for rev, at in t["commits"]:
            commit_at[rev] = min(at, commit_at.get(rev, at))
    samples = []
    for rev in revisions:
        blade_at = []
        for t in timings:
            first = next((at for r, at in t["blades"] if r >= rev), None)
            if first is None:
                raise BenchError(f"a node never reported revision {rev} applied")
            blade_at.append(first)
        samples.append(max(blade_at) - commit_at[rev])
    return samples


def fence_trials(cluster: LocalCluster, trials: int, profile: Profile) -> tuple[list[float], list[float]]:
    url = cluster.nodes[1].url
    admin = cluster.nodes[0].url
    for table, key, row in profile.setup:
        put_row(admin, table, key, row)
    mount = url + profile.probe

    def first(status: int, since: float, limit: float = 40.0) -> float:
        while True:
            code, _ = http("GET", mount, timeout=2)
            now = time.perf_counter()
            if code == status:
                return now - since
            if now - since > limit:
                raise BenchError(f"no {status} within {limit}s")

    first(200, time.perf_counter())
    fence, unfence = [], []
    for trial in range(trials):
        t0 = time.perf_counter()
        code, body = http("POST", f"{url}/v1/debug/faults", {"table": profile.fault_table, "mode": "error"})
        if code != 200:
            raise BenchError(f"cannot inject a fault: {code} {body}")
        fence.append(first(503, t0))
        t1 = time.perf_counter()
        http("DELETE", f"{url}/v1/debug/faults")
        unfence.append(first(200, t1))
        if (trial + 1) % 10 == 0:
            progress(f"fence trials: {trial + 1}/{trials}")
    return fence, unfence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--app", choices=sorted(PROFILES), default="ontap")
    parser.add_argument(
        "--connection-per-write", action="store_true", help="a new HTTP connection for every write (the old method)"
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.app]
    with fresh_cluster("rdbsync-latency-", fault_injection=True, node_args=["--app", profile.spec]) as cluster:
        progress(
            f"{args.app}: commit -> blade: {args.writes} {profile.latency_table} writes from {args.writers} writers"
            + (" (a connection per write)" if args.connection_per_write else " (each on its own kept connection)")
        )
        lat = commit_to_blade(
            cluster, args.writes, args.writers, profile, connection_per_write=args.connection_per_write
        )
        progress(f"fence/unfence: {args.trials} trials on n2 ({profile.fault_table} -> {profile.probe.split('?')[0]})")
        fence, unfence = fence_trials(cluster, args.trials, profile)
    # (figure, samples, bar, bar met, our goal for the figure or None)
    rows = [
        ("commit -> blade applied on all 3 nodes", lat, "p99 <= 50 ms", pct(lat, 0.99) <= 0.050, 0.010),
        ("injected failure -> first 503", fence, "p99 <= 100 ms", pct(fence, 0.99) <= 0.100, None),
        ("fault cleared -> first 200", unfence, "p99 <= 31 s", pct(unfence, 0.99) <= 31.0, None),
    ]
    print(f"\n{'figure':<40} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}  {'bar':<14} result")
    for name, samples, bar, ok, goal in rows:
        verdict = "PASS" if ok else "FAIL"
        if goal is not None:
            verdict += f" (goal p99 <= {goal * 1000:g} ms: {'met' if pct(samples, 0.99) <= goal else 'missed'})"
        print(
            f"{name:<40} {len(samples):>5} {statistics.median(samples) * 1000:>9.2f} "
            f"{pct(samples, 0.99) * 1000:>9.2f} {max(samples) * 1000:>9.2f}  {bar:<14} {verdict}"
        )
    return 0 if all(ok for _, _, _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
