"""Latency figures on a fresh three-node cluster with fault injection:

1. commit -> blade table applied on all three nodes, p50/p99 (from the first node that
   applied the commit to the last node whose blade tables reflect it; wall clocks of
   processes on one host);
2. injected resync failure -> first 503 from the data plane, and fault cleared -> first
   200 again, p50/p99 over --trials trials.

    scripts/bench-latency [--writes 500] [--trials 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BenchError, LocalCluster, fresh_cluster, http, pct, progress


def put_row(url: str, table: str, key: str, row: dict[str, Any]) -> int:
    status, body = http("PUT", f"{url}/v1/tables/{table}/{key}", row)
    if status != 200:
        raise BenchError(f"PUT {table}/{key}: {status} {body}")
    return int(body["revision"])


def commit_to_blade(cluster: LocalCluster, writes: int, writers: int) -> list[float]:
    urls = [n.url for n in cluster.nodes]
    start_revision = max(int(http("GET", f"{u}/v1/status")[1]["revision"]) for u in urls)
    counter = iter(range(writes))
    lock = threading.Lock()
    revisions: list[int] = []

    def writer(w: int) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            rev = put_row(urls[w % 3], "vservers", f"lat{i}", {"name": f"lat{i}", "protocols": ["nfs"]})
            with lock:
                revisions.append(rev)

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


def fence_trials(cluster: LocalCluster, trials: int) -> tuple[list[float], list[float]]:
    url = cluster.nodes[1].url
    admin = cluster.nodes[0].url
    put_row(admin, "vservers", "fv", {"name": "fv", "protocols": ["nfs"]})
    put_row(admin, "aggregates", "fa", {"name": "fa", "home_node": "n2", "size_mb": 1})
    put_row(
        admin,
        "volumes",
        "fvol",
        {"name": "fvol", "vserver": "fv", "aggregate": "fa", "size_mb": 1, "junction_path": "/fvol"},
    )
    put_row(
        admin,
        "export_rules",
        "fv:default:1",
        {"vserver": "fv", "policy": "default", "index": 1, "client_match": "0.0.0.0/0", "access": "rw"},
    )
    mount = f"{url}/v1/data/nfs/mount?vserver=fv&path=/fvol&client=10.0.0.1"

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
        code, body = http("POST", f"{url}/v1/debug/faults", {"table": "export_rules", "mode": "error"})
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
    args = parser.parse_args(argv)
    with fresh_cluster("rdbsync-latency-", fault_injection=True) as cluster:
        progress(f"commit -> blade: {args.writes} table writes from {args.writers} writers")
        lat = commit_to_blade(cluster, args.writes, args.writers)
        progress(f"fence/unfence: {args.trials} trials on n2 (export_rules -> nfs)")
        fence, unfence = fence_trials(cluster, args.trials)
    rows = [
        ("commit -> blade applied on all 3 nodes", lat, "p99 <= 50 ms", pct(lat, 0.99) <= 0.050),
        ("injected failure -> first 503", fence, "p99 <= 100 ms", pct(fence, 0.99) <= 0.100),
        ("fault cleared -> first 200", unfence, "p99 <= 31 s", pct(unfence, 0.99) <= 31.0),
    ]
    print(f"\n{'figure':<40} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}  {'bar':<14} result")
    for name, samples, bar, ok in rows:
        print(
            f"{name:<40} {len(samples):>5} {statistics.median(samples) * 1000:>9.2f} "
            f"{pct(samples, 0.99) * 1000:>9.2f} {max(samples) * 1000:>9.2f}  {bar:<14} {'PASS' if ok else 'FAIL'}"
        )
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
