"""rdbsync next to etcd 3.4, the yardstick of DESIGN.md, on this machine, same load.

    scripts/bench-etcd [--duration 10] [--connections 64] [--threads 2] [--skip-rdbsync]

Runs ``scripts/bench`` (a fresh three-node rdbsync cluster, wrk against a follower), then
starts three etcd members on free loopback ports (default settings: WAL fsync on every
commit, linearizable reads) and drives a follower's JSON gateway with the same wrk
settings and the same request shapes (``etcd_put.lua``: a never-written key with a
100-byte value; ``etcd_get.lua``: a uniform read of 1000 preloaded keys). Prints both side
by side. Exit status: 0 both runs completed without failed requests, 1 requests failed,
2 a run could not happen (etcd or wrk missing, cluster did not start).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def run_etcd(args: argparse.Namespace) -> tuple[WrkResult, WrkResult]:
    base_dir = tempfile.mkdtemp(prefix="rdbsync-etcd-bench-", dir=args.tmpdir)
    cluster = EtcdCluster(base_dir)
    try:
        cluster.start()
        follower = cluster.follower()
        progress(f"etcd: benchmarking against follower {follower}")
        run_id = f"r{int(time.time())}"
        writes = run_wrk("etcd writes", "etcd_put.lua", follower, args, [run_id])
        # The Lua base64 encoder wrote the keys and values we meant: read some back.
        prefix = f"bench/{run_id}/"
        sample = _post(
            follower + "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix[:-1] + "0"), "limit": 3}
        )
        kvs = [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"])) for kv in sample.get("kvs", [])]
        if not kvs or any(not k.startswith(prefix) or v != b"x" * 100 for k, v in kvs):
            raise BenchError(f"etcd_put.lua did not write what it should under {prefix}: {kvs}")
        for i in range(args.read_keys):
            _post(follower + "/v3/kv/put", {"key": _b64(f"bench-read/k{i}"), "value": _b64("x" * 100)})
        reads = run_wrk("etcd reads", "etcd_get.lua", follower, args, [str(args.read_keys)])
        return writes, reads
    finally:
        cluster.stop()
        shutil.rmtree(base_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=5)
    parser.add_argument("--read-keys", type=int, default=1000)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--skip-rdbsync", action="store_true", help="run etcd only")
    args = parser.parse_args(argv)
    for tool in ("etcd", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench-etcd: {tool} is not installed (scripts/bench-etcd installs it)", file=sys.stderr)
            return 2
    ours: dict[str, Any] | None = None
    if not args.skip_rdbsync:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            flags = ["--duration", str(args.duration), "--connections", str(args.connections)]
            flags += ["--threads", str(args.threads), "--read-keys", str(args.read_keys), "--json", out.name]
            if bench.main(flags) == 2:
                return 2
            ours = json.loads(Path(out.name).read_text())["results"]
    try:
        writes, reads = run_etcd(args)
    except (BenchError, OSError) as exc:
        print(f"bench-etcd: {exc}", file=sys.stderr)
        return 2
    print(f"\n{'figure (against a follower)':<32} {'rdbsync':>10} {'etcd 3.4':>10} {'ratio':>7}")
    failed = writes.failed_requests + reads.failed_requests
    for name, theirs in (("writes", writes), ("reads", reads)):
        mine = ours[name] if ours else None
        title = "durable writes/s" if name == "writes" else "linearizable reads/s"
        rows = [(title, "ok_per_s", "{:,.0f}")] + [(f"  {name} {p} ms", p, "{:.2f}") for p in ("p50", "p99")]
        for label, field, fmt in rows:
            b = theirs.ok_per_s if field == "ok_per_s" else theirs.latency_ms.get(field)
            a = None if mine is None else (mine["ok_per_s"] if field == "ok_per_s" else mine["latency_ms"].get(field))
            ratio = f"{a / b:.2f}" if a and b else "-"
            a_text = "-" if a is None else fmt.format(a)
            b_text = "-" if b is None else fmt.format(b)
            print(f"{label:<32} {a_text:>10} {b_text:>10} {ratio:>7}")
        if mine:
            failed += mine["non_2xx"] + sum(mine["socket_errors"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
