"""Stalls as data grows (issue 8.6, 9.6), on a fresh three-node cluster.

    scripts/bench-compaction [--keys 1000000] [--value-bytes 256] [--duration 90]
                             [--writers 8] [--compaction-entries 5000]
    scripts/bench-restore [--rows 100000] [--value-bytes 60] [--duration-after 5]

compaction: loads ``--keys`` keys (transactions of 128 puts, retried on failure), then
runs ``--writers`` client threads overwriting random keys (``--value-bytes`` each)
round-robin on the three nodes for ``--duration`` seconds, with ``--compaction-entries``
small enough that every node compacts (snapshots the whole key space) during the run.
A monitor polls /v1/status on every node every 0.1 s. Prints leader changes (term
increments), write latency p50/p99/max, compactions per node and their durations
(freeze to rename), and passes when no leader changed and write p99 < 1 s.

restore: loads nothing; runs two writers and two linearizable readers while it POSTs a
snapshot of ``--rows`` rows to the leader, polling the restore's progress from
/v1/status. Prints the restore's duration, entries, the progress samples seen, leader
changes, and read/write latency p50/p99/max during the restore; passes when no leader
changed.

Exit status: 0 pass, 1 a figure misses its bar or requests failed, 2 cannot run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BenchError, LocalCluster, fresh_cluster, http, pct, progress, wait_for

P99_BAR_S = 1.0


def generated_snapshot(rows: int, value_bytes: int, prefix: str) -> bytes:
    """A GET /v1/snapshot-shaped document with ``rows`` keys of ``value_bytes`` characters."""
    value = "v" * value_bytes
    doc = {
        "format": 1,
        "revision": 1,
        "applied_index": 0,
        "compacted": 0,
        "kvs": [[f"{prefix}{i:08d}", value, 1, 1, 1] for i in range(rows)],
        "history": [],
        "dedup": [],
        "staging": None,
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


class Monitor:
    """Polls /v1/status on every node; records terms, leaders, snapshots, restore progress."""

    def __init__(self, cluster: LocalCluster, interval: float = 0.1) -> None:
        self.cluster = cluster
        self.interval = interval
        self.samples: list[tuple[float, str, dict[str, Any]]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.cluster.nodes:
                try:
                    status, body = http("GET", node.url + "/v1/status", timeout=2)
                except OSError:
                    status, body = 0, None
                if status == 200 and isinstance(body, dict):
                    self.samples.append((time.monotonic(), node.id, body))
                else:
                    self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def terms(self) -> tuple[int, int]:
        terms = [body["term"] for _, _, body in self.samples]
        return (min(terms), max(terms)) if terms else (0, 0)

    def leaders(self) -> list[tuple[int, str | None]]:
        """(term, leader) in the order first seen."""
        seen: list[tuple[int, str | None]] = []
        for _, _, body in self.samples:
            pair = (int(body["term"]), body.get("leader"))
            if pair[1] is not None and pair not in seen:
                seen.append(pair)
        return seen

    def tick_stall_max(self) -> dict[str, float]:
        """Per node, the longest tick-thread stall reported while monitored."""
        out: dict[str, float] = {}
        for _, nid, body in self.samples:
            out[nid] = max(out.get(nid, 0.0), float(body.get("tick_stall_max_10s", 0.0)))
        return out

    def snapshots(self) -> dict[str, list[float]]:
        """Per node, the duration of each snapshot written while monitored."""
        out: dict[str, list[float]] = {}
        last: dict[str, int] = {}
        for _, nid, body in self.samples:
            snap = body.get("snapshots") or {}
            written = int(snap.get("written", 0))
            if nid in last and written > last[nid]:
                out.setdefault(nid, []).append(float(snap.get("last_seconds", 0.0)))
            last[nid] = written
            out.setdefault(nid, [])
        return out


def post_raw(url: str, data: bytes, timeout: float) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


def load_by_restore(cluster: LocalCluster, url: str, rows: int, value_bytes: int, prefix: str) -> dict[str, Any]:
    progress(f"generating a snapshot of {rows} keys of {value_bytes} B")
    data = generated_snapshot(rows, value_bytes, prefix)
    progress(f"POST /v1/restore ({len(data) / 1e6:.1f} MB) to {url}")
    t0 = time.monotonic()
    status, body = post_raw(url + "/v1/restore", data, 1800)
    if status != 200:
        raise BenchError(f"restore failed: HTTP {status}: {body}")
    body["wall_seconds"] = time.monotonic() - t0
    body["mb"] = len(data) / 1e6
    return dict(body)


def load_by_txn(cluster: LocalCluster, keys: int, value_bytes: int, prefix: str, writers: int = 8) -> dict[str, Any]:
    """Write ``keys`` keys in transactions of 128 puts from ``writers`` threads spread over
    the nodes, retrying a failed transaction (a put of the same value is harmless)."""
    value = "v" * value_bytes
    starts = iter(range(0, keys, 128))
    lock = threading.Lock()
    errors: list[str] = []
    retries = [0]
    t0 = time.monotonic()

    def writer(w: int) -> None:
        url = cluster.nodes[w % len(cluster.nodes)].url
        while not errors:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            ops = [
                {"op": "put", "key": f"{prefix}{i:08d}", "value": value} for i in range(start, min(keys, start + 128))
            ]
            for attempt in range(40):
                try:
                    status, body = http("POST", url + "/v1/txn", {"success": ops}, timeout=30)
                except OSError as exc:
                    status, body = 0, repr(exc)
                if status == 200:
                    break
                with lock:
                    retries[0] += 1
                time.sleep(min(2.0, 0.2 * (attempt + 1)))
            else:
                errors.append(f"txn at {start}: HTTP {status}: {body}")
            if start % 100_000 == 0:
                progress(f"loaded {start} keys")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(errors[0])
    return {"wall_seconds": time.monotonic() - t0, "retries": retries[0], "mb": keys * (value_bytes + 20) / 1e6}


def run_clients(
    stop: threading.Event, count: int, fn: Callable[[int, random.Random], tuple[bool, float]]
) -> tuple[list[threading.Thread], list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []

    def loop(w: int) -> None:
        rng = random.Random(w)
        while not stop.is_set():
            try:
                ok, seconds = fn(w, rng)
            except OSError as exc:
                failures.append(repr(exc))
                continue
            latencies.append(seconds)
            if not ok:
                failures.append(f"client {w}: failed after {seconds:.3f} s")

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in range(count)]
    for t in threads:
        t.start()
    return threads, latencies, failures


def timed(method: str, url: str, body: Any = None) -> tuple[bool, float]:
    t0 = time.monotonic()
    status, answer = http(method, url, body, timeout=30)
    if status != 200 and not (method == "GET" and status == 404):  # a restore removes keys
        raise OSError(f"{method} {url}: HTTP {status}: {str(answer)[:200]}")
    return True, time.monotonic() - t0


def line(label: str, text: str) -> None:
    print(f"{label:<28}{text}")


def ms(samples: list[float], q: float) -> str:
    return f"{pct(samples, q) * 1000:.1f}" if samples else "-"


def compaction(args: argparse.Namespace) -> int:
    extra = ["--compaction-entries", str(args.compaction_entries)]
    with fresh_cluster("rdbsync-compaction-", node_args=extra) as cluster:
        cluster.roles(30)
        progress(f"loading {args.keys} keys of {args.value_bytes} B in transactions of 128 puts")
        with Monitor(cluster, 0.5) as load_monitor:
            loaded = load_by_txn(cluster, args.keys, args.value_bytes, "c/")
        load_terms = load_monitor.terms()
        progress(f"loaded in {loaded['wall_seconds']:.1f} s ({loaded['retries']} retried txns); settling")
        last = f"c/{args.keys - 1:08d}"
        wait_for(
            lambda: all(http("GET", f"{n.url}/v1/kv/{last}", timeout=30)[0] == 200 for n in cluster.nodes),
            600,
            "load on every node",
        )
        cluster.roles(60)
        value = "w" * args.value_bytes
        urls = [n.url for n in cluster.nodes]

        def write(w: int, rng: random.Random) -> tuple[bool, float]:
            key = f"c/{rng.randrange(args.keys):08d}"
            return timed("PUT", f"{urls[w % len(urls)]}/v1/kv/{key}", {"value": value})

        progress(
            f"{args.writers} writers for {args.duration:.0f} s, compaction every {args.compaction_entries} entries"
        )
        stop = threading.Event()
        with Monitor(cluster) as monitor:
            time.sleep(1.0)
            threads, latencies, failures = run_clients(stop, args.writers, write)
            t0 = time.monotonic()
            deadline = t0 + args.duration
            while time.monotonic() < deadline:
                cluster.check_alive()
                time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(35)
            elapsed = time.monotonic() - t0
            time.sleep(0.5)
        low, high = monitor.terms()
        snaps = monitor.snapshots()
        stalls = monitor.tick_stall_max()
    changes = high - low
    all_snaps = [s for v in snaps.values() for s in v]
    p99 = pct(latencies, 0.99) if latencies else float("inf")
    print()
    line("keys loaded", f"{args.keys} x {args.value_bytes} B (about {loaded['mb']:.0f} MB)")
    line(
        "load (txns of 128) seconds",
        f"{loaded['wall_seconds']:.1f} ({loaded['retries']} txns retried; terms {load_terms[0]}..{load_terms[1]})",
    )
    line("writes", f"{len(latencies)} in {elapsed:.1f} s ({len(latencies) / elapsed:.0f}/s), failed {len(failures)}")
    line("write latency ms", f"p50 {ms(latencies, 0.5)}  p99 {ms(latencies, 0.99)}  max {ms(latencies, 1.0)}")
    line("leader changes", f"{changes} (terms {low}..{high}; leaders seen {monitor.leaders()})")
    for nid in sorted(snaps):
        durations = ", ".join(f"{s:.2f}" for s in snaps[nid]) or "none"
        print(f"compactions {nid:<16}{len(snaps[nid])}: seconds {durations}")
    line("longest tick stall s", ", ".join(f"{nid} {v:.2f}" for nid, v in sorted(stalls.items())))
    line("status polls failed", f"{monitor.errors}")
    ok = changes == 0 and p99 < P99_BAR_S and not failures and bool(all_snaps)
    line("result", f"{'PASS' if ok else 'FAIL'} (bar: no leader change, write p99 < 1 s, a compaction ran)")
    return 0 if ok else 1


def restore(args: argparse.Namespace) -> int:
    with fresh_cluster("rdbsync-restore-") as cluster:
        leader, _ = cluster.roles(30)
        urls = [n.url for n in cluster.nodes]
        for i in range(100):
            status, body = http("PUT", f"{urls[0]}/v1/kv/bg/{i}", {"value": i})
            if status != 200:
                raise BenchError(f"seed write failed: {status} {body}")
        data = generated_snapshot(args.rows, args.value_bytes, "r/")

        def write(w: int, rng: random.Random) -> tuple[bool, float]:
            return timed("PUT", f"{urls[w % len(urls)]}/v1/kv/bg/{rng.randrange(100)}", {"value": w})

        def read(w: int, rng: random.Random) -> tuple[bool, float]:
            return timed("GET", f"{urls[(w + 1) % len(urls)]}/v1/kv/bg/{rng.randrange(100)}")

        progress(f"restore of {args.rows} rows ({len(data) / 1e6:.1f} MB) to the leader {leader.id}, under load")
        stop = threading.Event()
        seen: list[dict[str, Any]] = []
        with Monitor(cluster) as monitor:
            time.sleep(1.0)
            wthreads, wlat, wfail = run_clients(stop, 2, write)
            rthreads, rlat, rfail = run_clients(stop, 2, read)
            time.sleep(3.0)
            before = (len(wlat), len(rlat))
            t0 = time.monotonic()
            status, body = post_raw(leader.url + "/v1/restore", data, 600)
            seconds = time.monotonic() - t0
            during = (len(wlat), len(rlat))
            time.sleep(args.duration_after)
            stop.set()
            for t in wthreads + rthreads:
                t.join(35)
            time.sleep(0.3)
            for _, nid, st in monitor.samples:
                report = st.get("restore")
                if nid == leader.id and report and (not seen or seen[-1] != report):
                    seen.append(report)
            low, high = monitor.terms()
            stalls = monitor.tick_stall_max()
    if status != 200:
        raise BenchError(f"restore failed: HTTP {status}: {body}")
    w_before, r_before = wlat[: before[0]], rlat[: before[1]]
    w_during = wlat[before[0] : during[0]]
    r_during = rlat[before[1] : during[1]]
    applying = [s for s in seen if s["state"] == "applying"]
    print()
    line("restore", f"{args.rows} rows, {len(data) / 1e6:.1f} MB, {seconds:.2f} s, {body.get('entries')} entries")
    print(
        f"progress samples (leader)   {len(seen)}, of them applying: {len(applying)}; e.g. "
        + ", ".join(f"{s['rows_applied']}/{s['rows_total']}" for s in applying[:: max(1, len(applying) // 5)])
    )
    line("leader changes", f"{high - low} (terms {low}..{high}; leaders seen {monitor.leaders()})")
    line(
        "reads during restore ms",
        f"n {len(r_during)}  p50 {ms(r_during, 0.5)}  p99 {ms(r_during, 0.99)}  max {ms(r_during, 1.0)}",
    )
    line(
        "writes during restore ms",
        f"n {len(w_during)}  p50 {ms(w_during, 0.5)}  p99 {ms(w_during, 0.99)}  max {ms(w_during, 1.0)}",
    )
    line("reads before ms", f"n {len(r_before)}  p50 {ms(r_before, 0.5)}  p99 {ms(r_before, 0.99)}")
    line("writes before ms", f"n {len(w_before)}  p50 {ms(w_before, 0.5)}  p99 {ms(w_before, 0.99)}")
    line("longest tick stall s", ", ".join(f"{nid} {v:.2f}" for nid, v in sorted(stalls.items())))
    line("failed requests", f"{len(wfail) + len(rfail)} {(wfail + rfail)[:3]}")
    if applying:
        line("checking took", f"{applying[0]['seconds']:.2f} s (then entries applied)")
    ok = high == low and not wfail and not rfail
    line("result", f"{'PASS' if ok else 'FAIL'} (bar: no leader change, no failed request)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compaction")
    c.add_argument("--keys", type=int, default=1_000_000)
    c.add_argument("--value-bytes", type=int, default=256)
    c.add_argument("--duration", type=float, default=90.0)
    c.add_argument("--writers", type=int, default=8)
    c.add_argument("--compaction-entries", type=int, default=5_000)
    r = sub.add_parser("restore")
    r.add_argument("--rows", type=int, default=100_000)
    r.add_argument("--value-bytes", type=int, default=60)
    r.add_argument("--duration-after", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        return compaction(args) if args.mode == "compaction" else restore(args)
    except BenchError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
