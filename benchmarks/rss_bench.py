"""Resident memory per node with 100k keys of 256 B, on a fresh three-node cluster.

    scripts/bench-rss [--keys 100000] [--value-bytes 256]

Writes ``--keys`` keys (transactions of 100 puts, from four client threads spread over
the nodes), waits until every node has applied the last revision, then reads each
node's VmRSS and VmHWM from /proc. Prints them against DESIGN.md's bar (first bar
<= 300 MB, goal <= 150 MB). Exit status: 0 every node meets the first bar, 1 one does
not, 2 the benchmark could not run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BenchError, LocalCluster, fresh_cluster, http, progress, wait_for

FIRST_BAR_MB = 300.0
GOAL_MB = 150.0
BATCH = 100


def proc_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def load(cluster: LocalCluster, keys: int, value: str, writers: int = 4) -> int:
    batches = iter(range(0, keys, BATCH))
    lock = threading.Lock()
    last = [0]
    errors: list[str] = []

    def writer(w: int) -> None:
        url = cluster.nodes[w % len(cluster.nodes)].url
        while not errors:
            with lock:
                start = next(batches, None)
            if start is None:
                return
            stop = min(keys, start + BATCH)
            ops = [{"op": "put", "key": f"rss/k{i:07d}", "value": value} for i in range(start, stop)]
            status, body = http("POST", url + "/v1/txn", {"success": ops}, timeout=30)
            if status != 200:
                errors.append(f"txn at {start}: HTTP {status}: {body}")
                return
            with lock:
                last[0] = max(last[0], int(body["revision"]))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(errors[0])
    return last[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-bytes", type=int, default=256)
    args = parser.parse_args(argv)
    # JSON string of exactly --value-bytes characters.
    value = "v" * args.value_bytes
    rows = []
    try:
        with fresh_cluster("rdbsync-rss-") as cluster:
            baseline = {n.id: proc_kib(n.proc.pid, "VmRSS") for n in cluster.nodes if n.proc}
            t0 = time.monotonic()
            revision = load(cluster, args.keys, value)
            progress(f"wrote {args.keys} keys in {time.monotonic() - t0:.1f}s (revision {revision})")
            for node in cluster.nodes:
                url = node.url

                def applied(url: str = url) -> bool:
                    return bool(http("GET", url + "/v1/status")[1]["revision"] >= revision)

                wait_for(applied, 60, f"{node.id} applied revision {revision}")
            for node in cluster.nodes:
                assert node.proc is not None
                rss = proc_kib(node.proc.pid, "VmRSS") / 1024
                peak = proc_kib(node.proc.pid, "VmHWM") / 1024
                rows.append((node.id, baseline[node.id] / 1024, rss, peak))
    except BenchError as exc:
        print(f"rss benchmark: {exc}", file=sys.stderr)
        return 2
    print(f"\n{args.keys} keys of {args.value_bytes} B")
    print(f"{'node':<6} {'idle MB':>8} {'RSS MB':>8} {'peak MB':>8}  bar (goal)          result")
    ok = True
    for nid, idle, rss, peak in rows:
        passed = rss <= FIRST_BAR_MB
        ok &= passed
        goal = " (goal met)" if rss <= GOAL_MB else ""
        bar = f"<= {FIRST_BAR_MB:.0f} MB (<= {GOAL_MB:.0f})"
        print(f"{nid:<6} {idle:>8.1f} {rss:>8.1f} {peak:>8.1f}  {bar}  {'PASS' if passed else 'FAIL'}{goal}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
