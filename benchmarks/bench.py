"""Benchmark a fresh three-node rdbsync cluster with wrk and compare with our first bar.

    scripts/bench [--duration 10] [--connections 64] [--threads 2] [--keep] [--json PATH]

Starts three nodes on free loopback ports in a temporary directory (the same argv as
``rdbsync run``, from ``node.launcher.LocalCluster``), waits until every node is
ready, picks a follower and runs, against that follower:

1. durable writes: ``wrk -s benchmarks/put.lua`` (PUT of a never-written key, ~100 B value);
2. linearizable reads: preloads ``--read-keys`` keys, then ``wrk -s benchmarks/get.lua``.

Prints a table (figure, value, first bar, pass/fail) and, with ``--json``, writes the
figures to a file. Non-2xx answers and socket errors are counted and fail the run. The
cluster is always stopped (SIGTERM, then SIGKILL after a bound), also on Ctrl-C/SIGTERM.

Exit status: 0 all figures meet the bar, 1 some figure misses it or requests failed,
2 the benchmark could not run (cluster did not come up, wrk missing, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, TypeVar

from node import launcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "benchmarks")
HOST = "127.0.0.1"
NODES = 3
WRITE_BAR = 1500.0  # durable writes/s, 64 connections, against a follower (DESIGN.md)
READ_BAR = 3000.0  # linearizable reads/s, 64 connections, against a follower (DESIGN.md)
STOP_GRACE_SECONDS = 10.0
VALUE = "x" * 100

T = TypeVar("T")
Node = launcher.Node
_PREEXEC = launcher.DIE_WITH_PARENT


class BenchError(Exception):
    """The benchmark cannot run (as opposed to: it ran and missed the bar)."""


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- HTTP


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, parsed body) through the launcher's one HTTP helper; OSError if no answer."""
    reply = launcher.http(method, url, body, timeout=timeout)
    return reply.status, reply.body


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """The launcher's bounded poll; BenchError after ``timeout``."""
    try:
        return launcher.wait_for(condition, timeout, what, interval)
    except launcher.WaitTimeout as exc:
        raise BenchError(str(exc)) from None


# ---------------------------------------------------------------- cluster


class LocalCluster:
    """Three node processes on loopback (``node.launcher.LocalCluster``, the same argv as
    ``rdbsync run``), each in its own session and killed if the benchmark dies, logs in
    ``base_dir``. ``nodes`` is a list, n1 first."""

    def __init__(self, base_dir: str, *, fault_injection: bool = False, node_args: list[str] | None = None) -> None:
        self.base_dir = base_dir
        try:
            base = launcher.port_block(2 * NODES, HOST)
        except OSError as exc:
            raise BenchError(str(exc)) from None
        env = dict(os.environ)
        env.pop("RDBSYNC_API_TOKEN", None)  # wrk sends no Authorization header
        self.cluster = launcher.LocalCluster(
            base_dir,
            NODES,
            host=HOST,
            raft_ports=[base + i for i in range(NODES)],
            http_ports=[base + NODES + i for i in range(NODES)],
            node_args=(["--fault-injection"] if fault_injection else []) + list(node_args or []),
            env=env,
            log_dir=base_dir,
            secret="keep",
            cwd=REPO,
            die_with_parent=True,  # the main thread starts every node
        )
        self.nodes: list[Node] = list(self.cluster.nodes.values())

    def start(self) -> None:
        for node in self.nodes:
            self.start_node(node)

    def start_node(self, node: Node) -> None:
        """Start (or restart, on the same data directory) one node process."""
        self.cluster.start(node.id)
        assert node.proc is not None
        progress(f"started {node.id} (pid {node.proc.pid}) http {node.url}")

    def check_alive(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise BenchError(f"node {node.id} exited with {node.proc.returncode}\n{self.log_tail(node)}")

    def log_tail(self, node: Node, lines: int = 15) -> str:
        try:
            with open(node.log_path or "", errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError:
            return ""
        return "".join(f"    {node.id}| {line}" for line in tail)

    def wait_ready(self, timeout: float) -> None:
        def all_ready() -> bool:
            self.check_alive()
            return all(self.cluster.ready(n.id) for n in self.nodes)

        wait_for(all_ready, timeout, "/readyz on all nodes")

    def roles(self, timeout: float) -> tuple[Node, Node]:
        """(leader, follower) once every node names the same leader and has quorum."""

        def agreed() -> tuple[Node, Node] | None:
            self.check_alive()
            statuses = {n.id: http("GET", n.url + "/v1/status", timeout=2)[1] for n in self.nodes}
            leaders = {st.get("leader") for st in statuses.values() if isinstance(st, dict)}
            if len(leaders) != 1 or not all(isinstance(st, dict) and st.get("quorum") for st in statuses.values()):
                return None
            leader = [n for n in self.nodes if statuses[n.id]["role"] == "leader"]
            followers = [n for n in self.nodes if statuses[n.id]["role"] == "follower"]
            if len(leader) != 1 or not followers or leader[0].id not in leaders:
                return None
            return leader[0], followers[0]

        return wait_for(agreed, timeout, "one leader that every node agrees on")

    def stop(self) -> None:
        """SIGTERM every node, wait up to STOP_GRACE_SECONDS, then SIGKILL what is left."""
        running = [n for n in self.nodes if n.alive]
        self.cluster.stop_all(STOP_GRACE_SECONDS)
        if running:
            codes = ", ".join(f"{n.id}={n.proc.returncode}" for n in running if n.proc is not None)
            progress(f"cluster stopped ({codes})")


@contextlib.contextmanager
def fresh_cluster(
    prefix: str, *, fault_injection: bool = False, node_args: list[str] | None = None
) -> Iterator[LocalCluster]:
    """A ready three-node cluster in a temporary directory; always stopped and removed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cluster = LocalCluster(os.path.join(tmp, "c"), fault_injection=fault_injection, node_args=node_args)
        os.makedirs(cluster.base_dir, exist_ok=True)
        try:
            cluster.start()
            cluster.wait_ready(30)
            yield cluster
        finally:
            cluster.stop()


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def preload(url: str, keys: int, batch: int = 100) -> None:
    """Write bench-read/k0 .. k<keys-1> in transactions of ``batch`` puts (a txn holds at most 128 ops)."""
    for start in range(0, keys, batch):
        ops = [{"op": "put", "key": f"bench-read/k{i}", "value": VALUE} for i in range(start, min(keys, start + batch))]
        status, body = http("POST", url + "/v1/txn", {"success": ops}, timeout=30)
        if status != 200:
            raise BenchError(f"preload failed: HTTP {status}: {body}")
    status, body = http("GET", f"{url}/v1/kv/bench-read/k{keys - 1}", timeout=10)
    if status != 200:
        raise BenchError(f"preloaded key not readable: HTTP {status}: {body}")


# ---------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    name: str
    command: str
    requests: int = 0
    duration_s: float = 0.0
    requests_per_s: float = 0.0  # wrk's Requests/sec: every completed request, whatever its status
    ok_per_s: float = 0.0  # 2xx answers per second: the figure held against the bar
    latency_ms: dict[str, float] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    #: CPU time (user + system) each node spent per 2xx answer during the run, in us,
    #: by role (leader, target, other): filled by ``measure_cpu``.
    cpu_us_per_ok: dict[str, float] = field(default_factory=dict)

    @property
    def failed_requests(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_cpu(roles: dict[str, Any], run: Callable[[], WrkResult]) -> WrkResult:
    """``run()``, with each node's CPU time per 2xx answer recorded in the result
    (``roles``: role name -> a node with a ``proc``)."""
    before = {role: cpu_seconds(node.proc.pid) for role, node in roles.items()}
    result = run()
    ok = result.ok_per_s * result.duration_s
    if ok > 0:
        result.cpu_us_per_ok = {
            role: round(1e6 * (cpu_seconds(node.proc.pid) - before[role]) / ok, 1) for role, node in roles.items()
        }
    return result


def describe_cpu(result: WrkResult) -> str:
    if not result.cpu_us_per_ok:
        return ""
    parts = ", ".join(f"{role} {us:.0f}" for role, us in result.cpu_us_per_ok.items())
    return f"; CPU us per answer: {parts}"


def parse_wrk(name: str, command: str, output: str) -> WrkResult:
    """Figures from wrk's text output, made exact by the RDBSYNC_BENCH line of common.lua's done()."""
    res = WrkResult(name, command)
    if m := re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M):
        res.requests = int(m.group(1))
        res.duration_s = float(m.group(2)) * _UNIT_MS[m.group(3)] / 1000
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M):
        res.requests_per_s = float(m.group(1))
    dist = output.split("Latency Distribution", 1)[-1]
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", dist, re.M):
        res.latency_ms[f"p{pct}"] = float(value) * _UNIT_MS[unit]
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        res.non_2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        res.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    if m := re.search(r"^RDBSYNC_BENCH (\{.*\})\s*$", output, re.M):
        doc = json.loads(m.group(1))
        res.requests = int(doc["requests"])
        res.duration_s = doc["duration_us"] / 1e6
        res.statuses = {str(k): int(v) for k, v in sorted(doc["statuses"].items())}
        res.non_2xx = sum(n for code, n in res.statuses.items() if not code.startswith("2"))
        res.socket_errors = {k: int(v) for k, v in doc["errors"].items() if k != "status"}
        lat = doc["latency_us"]
        res.latency_ms.update({k: round(lat[k] / 1000, 3) for k in ("p50", "p90", "p99", "max", "mean")})
    if res.requests == 0 or res.duration_s <= 0:
        raise BenchError(f"could not parse wrk output of {name}:\n{output}")
    if not res.requests_per_s:
        res.requests_per_s = res.requests / res.duration_s
    res.ok_per_s = (res.requests - res.non_2xx) / res.duration_s
    return res


@contextlib.contextmanager
def _child(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_PREEXEC
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_wrk(name: str, script: str, url: str, args: argparse.Namespace, script_args: list[str]) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "--timeout",
        f"{args.timeout}s",
        "-s",
        os.path.relpath(os.path.join(BENCH_DIR, script), REPO),
        url,
        "--",
        *script_args,
    ]
    command = shlex.join(cmd)
    progress(f"{name}: {command}")
    with _child(cmd) as proc:
        try:
            output, _ = proc.communicate(timeout=args.duration + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not finish within {args.duration + 60}s") from None
    print("".join(f"    | {line}\n" for line in output.rstrip().splitlines()), end="", flush=True)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}")
    result = parse_wrk(name, command, output)
    if result.duration_s < 0.9 * args.duration:  # wrk ends a run early, with figures, on SIGINT
        raise BenchError(f"wrk stopped after {result.duration_s:.1f}s of {args.duration}s (interrupted?)")
    return result


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


# ---------------------------------------------------------------- report


@dataclass
class Check:
    figure: str
    value: str
    bar: str
    ok: bool | None  # None: informational, no bar


def checks(writes: WrkResult, reads: WrkResult) -> list[Check]:
    out: list[Check] = []
    for res, bar, what in ((writes, WRITE_BAR, "durable writes/s"), (reads, READ_BAR, "linearizable reads/s")):
        out.append(Check(f"{what} (2xx only)", f"{res.ok_per_s:,.0f}", f">= {bar:,.0f}", res.ok_per_s >= bar))
        out.append(Check(f"  {res.name}: wrk Requests/sec", f"{res.requests_per_s:,.0f}", "", None))
        for pct in ("p50", "p99"):
            if pct in res.latency_ms:
                out.append(Check(f"  {res.name}: latency {pct}", f"{res.latency_ms[pct]:.2f} ms", "", None))
        detail = ", ".join(f"{c}: {n}" for c, n in res.statuses.items() if not c.startswith("2"))
        out.append(
            Check(
                f"  {res.name}: non-2xx responses",
                f"{res.non_2xx}{f' ({detail})' if detail else ''}",
                "0",
                res.non_2xx == 0,
            )
        )
        errs = sum(res.socket_errors.values())
        detail = ", ".join(f"{k} {v}" for k, v in res.socket_errors.items() if v)
        out.append(Check(f"  {res.name}: socket errors", f"{errs}{f' ({detail})' if detail else ''}", "0", errs == 0))
    return out


def print_table(rows: list[Check]) -> None:
    head = ("figure", "value", "first bar", "result")
    cells = [(r.figure, r.value, r.bar, "" if r.ok is None else ("PASS" if r.ok else "FAIL")) for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    print("\n" + fmt.format(*head) + "\n" + line)
    for c in cells:
        print(fmt.format(*c))
    print(line, flush=True)


# ---------------------------------------------------------------- main


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--timeout", type=int, default=5, help="wrk per-request timeout in seconds (default 5)")
    p.add_argument("--read-keys", type=int, default=1000, help="keys preloaded for the read run (default 1000)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--keep", action="store_true", help="keep the cluster's data directory (and node logs)")
    p.add_argument("--tmpdir", default=None, help="parent of the data directory (default: system temp dir)")
    args = p.parse_args(argv)
    if args.duration < 1 or args.threads < 1 or args.connections < args.threads or args.read_keys < 1:
        p.error("need --duration >= 1, --threads >= 1, --connections >= --threads, --read-keys >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (scripts/bench installs it: apt-get install -y wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    base_dir = tempfile.mkdtemp(prefix="rdbsync-bench-", dir=args.tmpdir)
    cluster: LocalCluster | None = None
    try:
        progress(f"{wrk_version()}; {os.cpu_count()} CPUs; data dir {base_dir}")
        cluster = LocalCluster(base_dir)
        cluster.start()
        cluster.wait_ready(timeout=30)
        leader, follower = cluster.roles(timeout=15)
        progress(f"all nodes ready; leader {leader.id}, benchmarking against follower {follower.id} {follower.url}")

        others = [n for n in cluster.nodes if n not in (leader, follower)]
        roles = {"leader": leader, "target": follower, **({"other": others[0]} if others else {})}
        run_id = f"r{int(time.time())}"
        writes = measure_cpu(roles, lambda: run_wrk("writes", "put.lua", follower.url, args, [run_id]))
        cluster.check_alive()
        progress(
            f"writes: {writes.ok_per_s:,.0f} ok/s, p99 {writes.latency_ms.get('p99', 0):.2f} ms, "
            f"{writes.failed_requests} failed{describe_cpu(writes)}"
        )

        progress(f"preloading {args.read_keys} keys under bench-read/ through {follower.id}")
        preload(follower.url, args.read_keys)
        reads = measure_cpu(roles, lambda: run_wrk("reads", "get.lua", follower.url, args, [str(args.read_keys)]))
        cluster.check_alive()
        progress(
            f"reads: {reads.ok_per_s:,.0f} ok/s, p99 {reads.latency_ms.get('p99', 0):.2f} ms, "
            f"{reads.failed_requests} failed{describe_cpu(reads)}"
        )

        rows = checks(writes, reads)
        print_table(rows)
        passed = all(r.ok is not False for r in rows)
        errors = writes.failed_requests + reads.failed_requests
        if errors:
            print(f"bench: {errors} request(s) FAILED (non-2xx or socket errors): the figures above are suspect")
        print(f"bench: {'PASS: every figure meets the first bar' if passed else 'FAIL: see the table'}", flush=True)
        if args.json:
            doc = {
                "passed": passed,
                "config": {k: getattr(args, k) for k in ("duration", "connections", "threads", "timeout", "read_keys")},
                "environment": {
                    "wrk": wrk_version(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "leader": leader.id,
                    "follower": follower.id,
                    "target": follower.url,
                },
                "bars": {"writes_per_s": WRITE_BAR, "reads_per_s": READ_BAR},
                "results": {"writes": asdict(writes), "reads": asdict(reads)},
                "checks": [asdict(r) for r in rows],
            }
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            progress(f"figures written to {args.json}")
        return 0 if passed else 1
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        if cluster is not None:
            for node in cluster.nodes:
                sys.stderr.write(cluster.log_tail(node, 5))
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the cluster", file=sys.stderr)
        return 130
    except SystemExit:
        print("bench: terminated; stopping the cluster", file=sys.stderr)
        raise
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cluster is not None:
            cluster.stop()
        if args.keep:
            progress(f"kept data dir and node logs: {base_dir}")
        else:
            shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
