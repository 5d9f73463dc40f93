"""rdbsync next to etcd 3.4, the yardstick of DESIGN.md, on this machine, same load.

    scripts/bench-etcd [--duration 10] [--rounds 3] [--connections 64] [--threads 2]

Starts a fresh three-node rdbsync cluster and three etcd members on free loopback ports
(default settings: WAL fsync on every commit, linearizable reads), both at once, and
drives a follower of each with the same wrk settings and request shapes (``put.lua`` /
``etcd_put.lua``: a never-written key with a 100-byte value; ``get.lua`` /
``etcd_get.lua``: a uniform read of 1000 preloaded keys). Each load runs in ``--rounds``
slices of ``--duration`` seconds per system, alternating which goes first (ABBA): the
shared host's speed drifts by tens of percent within minutes, and one long run of each,
one after the other, measured the drift as much as the systems. Prints both side by
side, the ratio of the totals and the ratio of each round. Exit status: 0 every request
succeeded, 1 requests failed, 2 a run could not happen (etcd or wrk missing, a cluster
did not start).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
from bench import HOST, BenchError, WrkResult, progress, run_wrk, wait_for

from node.launcher import port_block

MEMBERS = 3


def _post(url: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdCluster:
    """Three etcd members on loopback, each in its own session, logs in ``base_dir``."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        base = port_block(2 * MEMBERS, HOST)
        self.client = [f"http://{HOST}:{base + i}" for i in range(MEMBERS)]
        self.peer = [f"http://{HOST}:{base + MEMBERS + i}" for i in range(MEMBERS)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        initial = ",".join(f"e{i + 1}={self.peer[i]}" for i in range(MEMBERS))
        for i in range(MEMBERS):
            argv = [
                "etcd",
                "--name",
                f"e{i + 1}",
                "--data-dir",
                os.path.join(self.base_dir, f"e{i + 1}"),
                "--listen-client-urls",
                self.client[i],
                "--advertise-client-urls",
                self.client[i],
                "--listen-peer-urls",
                self.peer[i],
                "--initial-advertise-peer-urls",
                self.peer[i],
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "rdbsync-bench",
            ]
            with open(os.path.join(self.base_dir, f"e{i + 1}.log"), "ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=bench._PREEXEC,
                    )
                )
        progress(f"started etcd members at {', '.join(self.client)}")

    def follower(self) -> str:
        def pick() -> str | None:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise BenchError(f"an etcd member exited with {proc.returncode}; see {self.base_dir}")
            statuses = [_post(url + "/v3/maintenance/status", {}) for url in self.client]
            leaders = {st.get("leader") for st in statuses}
            if len(leaders) != 1 or None in leaders:
                return None
            leader = leaders.pop()
            members = zip(self.client, statuses, strict=True)
            return next(url for url, st in members if st["header"]["member_id"] != leader)

        return wait_for(pick, 30, "an etcd leader every member agrees on")

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        progress("etcd stopped")


@dataclass
class Side:
    """One system's slices of one load, and what they add up to."""

    slices: list[WrkResult] = field(default_factory=list)

    @property
    def ok_per_s(self) -> float:
        seconds = sum(r.duration_s for r in self.slices)
        return sum(r.ok_per_s * r.duration_s for r in self.slices) / seconds if seconds else 0.0

    def latency(self, pct: str) -> float | None:
        """The median over the slices (percentiles of different runs do not add up)."""
        values = [r.latency_ms[pct] for r in self.slices if pct in r.latency_ms]
        return statistics.median(values) if values else None

    @property
    def failed(self) -> int:
        return sum(r.failed_requests for r in self.slices)


def _check_etcd_writes(follower: str, run_id: str) -> None:
    """The Lua base64 encoder wrote the keys and values we meant: read some back."""
    prefix = f"bench/{run_id}/"
    sample = _post(follower + "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix[:-1] + "0"), "limit": 3})
    kvs = [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"])) for kv in sample.get("kvs", [])]
    if not kvs or any(not k.startswith(prefix) or v != b"x" * 100 for k, v in kvs):
        raise BenchError(f"etcd_put.lua did not write what it should under {prefix}: {kvs}")


def run_interleaved(args: argparse.Namespace) -> dict[str, dict[str, Side]]:
    """Both clusters up side by side; each load runs in ``args.rounds`` slices of
    ``args.duration`` seconds per system, alternating which goes first (ABBA), so a drift
    of the shared host's speed during the run weighs on both alike."""
    base_dir = tempfile.mkdtemp(prefix="rdbsync-etcd-bench-", dir=args.tmpdir)
    ours_cluster = bench.LocalCluster(os.path.join(base_dir, "rdbsync"))
    theirs_cluster = EtcdCluster(base_dir)
    out: dict[str, dict[str, Side]] = {load: {"rdbsync": Side(), "etcd": Side()} for load in ("writes", "reads")}
    try:
        ours_cluster.start()
        ours_cluster.wait_ready(timeout=30)
        _, ours = ours_cluster.roles(timeout=15)
        theirs_cluster.start()
        theirs = theirs_cluster.follower()
        progress(f"against followers: rdbsync {ours.id} {ours.url}, etcd {theirs}")
        run_id = f"r{int(time.time())}"
        scripts = {
            "writes": {"rdbsync": ("put.lua", ours.url), "etcd": ("etcd_put.lua", theirs)},
            "reads": {"rdbsync": ("get.lua", ours.url), "etcd": ("etcd_get.lua", theirs)},
        }
        for load in ("writes", "reads"):
            if load == "reads":
                progress(f"preloading {args.read_keys} keys on both")
                bench.preload(ours.url, args.read_keys)
                for i in range(args.read_keys):
                    _post(theirs + "/v3/kv/put", {"key": _b64(f"bench-read/k{i}"), "value": _b64("x" * 100)})
            for r in range(args.rounds):
                order = ("rdbsync", "etcd") if r % 2 == 0 else ("etcd", "rdbsync")
                for system in order:
                    script, url = scripts[load][system]
                    extra = [f"{run_id}-{r}"] if load == "writes" else [str(args.read_keys)]
                    name = f"{system} {load} {r + 1}/{args.rounds}"
                    out[load][system].slices.append(run_wrk(name, script, url, args, extra))
                ours_cluster.check_alive()
            if load == "writes":
                _check_etcd_writes(theirs, f"{run_id}-0")
        return out
    finally:
        theirs_cluster.stop()
        ours_cluster.stop()
        shutil.rmtree(base_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per slice (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="slices per system and load, alternated (default 3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=5)
    parser.add_argument("--read-keys", type=int, default=1000)
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    for tool in ("etcd", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench-etcd: {tool} is not installed (scripts/bench-etcd installs it)", file=sys.stderr)
            return 2
    try:
        results = run_interleaved(args)
    except (BenchError, OSError) as exc:
        print(f"bench-etcd: {exc}", file=sys.stderr)
        return 2
    print(f"\n{args.rounds} slice(s) of {args.duration} s per system and load, alternated")
    print(f"{'figure (against a follower)':<32} {'rdbsync':>10} {'etcd 3.4':>10} {'ratio':>7}")
    failed = 0
    for load, title in (("writes", "durable writes/s"), ("reads", "linearizable reads/s")):
        ours, theirs = results[load]["rdbsync"], results[load]["etcd"]
        failed += ours.failed + theirs.failed
        rows: list[tuple[str, float | None, float | None, str]] = [(title, ours.ok_per_s, theirs.ok_per_s, "{:,.0f}")]
        rows += [(f"  {load} {p} ms (median)", ours.latency(p), theirs.latency(p), "{:.2f}") for p in ("p50", "p99")]
        for label, a, b, fmt in rows:
            ratio = f"{a / b:.2f}" if a and b else "-"
            a_text, b_text = ("-" if v is None else fmt.format(v) for v in (a, b))
            print(f"{label:<32} {a_text:>10} {b_text:>10} {ratio:>7}")
        per_round = [
            f"{x.ok_per_s / y.ok_per_s:.2f}" for x, y in zip(ours.slices, theirs.slices, strict=True) if y.ok_per_s
        ]
        print(f"  {load} ratio per round: {', '.join(per_round)}")
    if failed:
        print(f"bench-etcd: {failed} request(s) FAILED (non-2xx or socket errors): the figures above are suspect")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
