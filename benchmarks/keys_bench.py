"""Write cost of new keys as the key space grows (10k, 100k, 1M keys by default).

    scripts/bench-keys [--sizes 10000,100000,1000000] [--state-machine] [--writes 20000]
                       [--duration 10] [--connections 64]

``--state-machine``: the state machine alone, in this process (a quick figure, no
cluster): it is loaded with N keys through ``restore`` (random names, so new keys land
at random places in the key order), then ``--writes`` put commands of new keys are
applied one by one; prints the mean and p99 cost per write in microseconds.

Without it: a fresh three-node cluster; for each size the key space is replaced by a
snapshot of N keys (``POST /v1/restore``), which every node then compacts into its own
snapshot (the restore's entries hold the key space a second time); then wrk PUTs new
random keys against a follower (``benchmarks/keys_put.lua``) and reads random
preloaded keys (``benchmarks/get.lua``); prints writes/s and p99 per size.

Either way it ends with the ratio of the largest size to the smallest (flat within 20%:
the write figure at 1M keys is at least 0.8 of the one at 10k). Exit status: 0 flat,
1 not flat, 2 the benchmark could not run.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack

from rdb import StateMachine
from rdb._commands import put as put_command

FLAT = 0.8


def key_name(i: int) -> str:
    """A well-spread key name for preloaded key i (the same space as keys_put.lua's)."""
    return "keys/" + hashlib.blake2b(i.to_bytes(8, "big"), digest_size=4).hexdigest() + f"-pre-{i}"


def snapshot_of(n: int, value: str = "x" * 16) -> bytes:
    """A StateMachine snapshot with keys key_name(0..n-1), each at its own revision."""
    doc = {
        "format": 1,
        "revision": n,
        "applied_index": 0,
        "compacted": n,
        "kvs": [[key_name(i), value, i + 1, i + 1, 1] for i in range(n)],
        "history": [],
        "dedup": [],
        "staging": None,
    }
    data: bytes = msgpack.packb(doc, use_bin_type=True)
    return data


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def state_machine_figures(n: int, writes: int, rounds: int = 3) -> tuple[float, float, float]:
    """(mean µs, median µs, p99 µs) per applied put of a new key with ``n`` keys loaded.

    The machine is shared: each figure is the best of ``rounds`` runs of ``writes`` puts
    (noise only ever adds time). Times are this thread's CPU time."""
    sm = StateMachine()
    sm.restore(snapshot_of(n), strict=False)
    # The loading made millions of objects: collect them now, as a running node will have
    # long since, rather than charge one full collection to the writes measured.
    gc.collect()
    best = (float("inf"), float("inf"), float("inf"))
    clock = time.thread_time_ns  # CPU time: other processes on a shared machine do not count
    index = 0
    for r in range(rounds):
        commands = [
            put_command(
                "keys/" + hashlib.blake2b(i.to_bytes(8, "big"), key=b"new", digest_size=4).hexdigest() + f"-new-{i}",
                "x" * 16,
                request_id=f"bench-{i}",
            )
            for i in range(r * writes, (r + 1) * writes)
        ]
        samples = []
        t0 = clock()
        for cmd in commands:
            index += 1
            s = clock()
            result = sm.apply(cmd, index)
            samples.append((clock() - s) / 1000)
            if result.get("status") != "ok":
                raise RuntimeError(f"apply failed: {result}")
        mean = (clock() - t0) / 1000 / writes
        best = (min(best[0], mean), min(best[1], pct(samples, 0.5)), min(best[2], pct(samples, 0.99)))
    if len(sm) != n + rounds * writes:
        raise RuntimeError(f"expected {n + rounds * writes} keys, have {len(sm)}")
    return best


def run_state_machine(sizes: list[int], writes: int) -> int:
    rows = []
    for n in sizes:
        mean, median, p99 = state_machine_figures(n, writes)
        rows.append((n, mean, median))
        print(
            f"state machine, {n:>9,} keys: {mean:7.1f} µs/write mean, median {median:6.1f}, p99 {p99:7.1f} "
            f"(best of 3 x {writes} new keys)"
        )
    ratio = rows[0][1] / rows[-1][1]  # writes/s at the largest size over the smallest
    flat = ratio >= FLAT
    print(f"median ratio {rows[0][2] / rows[-1][2]:.2f}")
    print(
        f"writes/s at {rows[-1][0]:,} keys / at {rows[0][0]:,} keys = {ratio:.2f} "
        f"(flat within 20%: >= {FLAT}) {'PASS' if flat else 'FAIL'}"
    )
    return 0 if flat else 1


def snapshots_written(url: str) -> int:
    """How many snapshots the node at ``url`` has written (``/v1/status``)."""
    from bench import http

    return int(http("GET", url + "/v1/status")[1]["snapshots"]["written"])


def run_cluster(sizes: list[int], args: argparse.Namespace) -> int:
    import shutil

    from bench import BenchError, LocalCluster, fresh_cluster, http, progress, run_wrk, wait_for

    from node import launcher

    if shutil.which("wrk") is None:
        print("bench-keys: wrk is not installed (scripts/bench-keys installs it)", file=sys.stderr)
        return 2
    rows = []
    try:
        # Applying a restore of 1M keys takes longer than the default 5 s proposal deadline.
        with fresh_cluster("rdbsync-keys-", node_args=["--request-timeout", "120"]) as cluster:
            leader, follower = LocalCluster.roles(cluster, timeout=15)
            progress(f"leader {leader.id}; benchmarking against follower {follower.id}")
            for n in sizes:
                t0 = time.monotonic()
                written = {node.id: snapshots_written(node.url) for node in cluster.nodes}
                snap = snapshot_of(n)
                reply = launcher.http("POST", follower.url + "/v1/restore", raw=snap, timeout=600)
                status, body = reply.status, reply.body
                if status != 200:
                    raise BenchError(f"restore of {n} keys: HTTP {status}: {body}")
                revision = int(body["revision"])
                for node in cluster.nodes:

                    def applied(url: str = node.url, revision: int = revision) -> bool:
                        return bool(http("GET", url + "/v1/status")[1]["revision"] >= revision)

                    wait_for(applied, 600, f"{node.id} applied the restore of {n} keys")
                progress(f"{n:,} keys restored on every node in {time.monotonic() - t0:.1f}s")
                # Each node then compacts the restore's entries away (rdb's compact_soon):
                # a one-off of loading the keys, not part of writing at this size.
                for node in cluster.nodes:

                    def compacted(url: str = node.url, before: int = written[node.id]) -> bool:
                        return snapshots_written(url) > before

                    wait_for(compacted, 300, f"{node.id} compacted the restore of {n} keys")
                progress(f"{n:,} keys compacted into every node's snapshot after {time.monotonic() - t0:.1f}s")
                w = run_wrk(f"writes@{n}", "keys_put.lua", follower.url, args, [f"r{n}"])
                cluster.check_alive()
                rows.append((n, w))
                progress(f"{n:,} keys: {w.ok_per_s:,.0f} writes/s, p99 {w.latency_ms.get('p99', 0):.1f} ms")
    except BenchError as exc:
        print(f"bench-keys: {exc}", file=sys.stderr)
        return 2
    print()
    for n, w in rows:
        print(
            f"cluster, {n:>9,} keys: {w.ok_per_s:8,.0f} writes/s, p99 {w.latency_ms.get('p99', 0):7.1f} ms, "
            f"{w.failed_requests} failed"
        )
    ratio = rows[-1][1].ok_per_s / rows[0][1].ok_per_s
    flat = ratio >= FLAT and all(w.failed_requests == 0 for _, w in rows)
    print(
        f"writes/s at {rows[-1][0]:,} keys / at {rows[0][0]:,} keys = {ratio:.2f} "
        f"(flat within 20%: >= {FLAT}) {'PASS' if flat else 'FAIL'}"
    )
    return 0 if flat else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated key counts")
    p.add_argument("--state-machine", action="store_true", help="the state machine alone, no cluster")
    p.add_argument("--writes", type=int, default=5_000, help="new keys per round (3 rounds) per size (--state-machine)")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (cluster)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=5)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        p.error("--sizes needs positive key counts")
    if args.state_machine:
        return run_state_machine(sizes, args.writes)
    return run_cluster(sizes, args)


if __name__ == "__main__":
    sys.exit(main())
