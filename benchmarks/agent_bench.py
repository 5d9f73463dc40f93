"""Agent figures on a fresh three-node ``apps.proxy`` cluster, one ``rdbsync.agent.Agent``
per node (in this process, threads) holding blade table ``pools``:

1. commit -> applied in the agents of all three nodes, p50/p99: from the commit (the
   first node's record of it, ``/v1/debug/timings``, as ``scripts/bench-latency``) to
   the last of the three agents' callbacks (wall clocks of processes on one host);
2. a load of --rows rows into a fresh agent: start -> first load applied (the node's
   projection at one revision, diffed and applied through the callback);
3. agent failure -> dependent consumer fenced, p50/p99: from the callback raising (wall
   clock in the agent) to the node's ``fenced`` event (wall clock in the node).

    scripts/bench-agents [--writes 300] [--rows 100000] [--trials 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rdbsync import Agent  # noqa: E402
from tests.integration.cluster import Cluster, http, wait_for  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Recorder:
    """Per-row callbacks that note when each key arrived; keys starting 'fail' raise."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.failed_at: dict[str, float] = {}
        self.cond = threading.Condition()

    def add(self, table: str, key: str, row: dict[str, Any]) -> None:
        if key.startswith("fail"):
            self.failed_at.setdefault(key, time.time())  # the first failure: the agent retries it
            raise ValueError(f"cannot apply {key}")
        with self.cond:
            self.seen[key] = time.time()
            self.cond.notify_all()

    def modify(self, table: str, key: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.add(table, key, new)

    def remove(self, table: str, key: str, old: dict[str, Any]) -> None:
        pass


def agent(url: str, rec: Recorder) -> Agent:
    return Agent(url, "bench", ["pools"], on_add=rec.add, on_modify=rec.modify, on_remove=rec.remove, grace=5.0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--writes", type=int, default=300)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--trials", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="rdbsync-agent-bench-") as tmp:
        c = Cluster(tmp, 3, extra_args=["--app", "apps.proxy:app", "--agent", "bench=pools", "--fault-injection"])
        c.start()
        recs = {nid: Recorder() for nid in c.nodes}
        agents = {nid: agent(c.url(nid), recs[nid]).start() for nid in c.nodes}
        try:
            c.wait_ready(60)
            out: dict[str, Any] = {}
            # 1. commit -> applied in every agent
            samples, put_samples, revisions = [], [], {}
            for i in range(args.writes):
                key = f"lat{i}"
                t0 = time.monotonic()
                status, body = put(c.url("n1"), key)
                put_samples.append(time.monotonic() - t0)
                assert status == 200
                revisions[key] = body["revision"]
                deadline = t0 + 10
                for rec in recs.values():
                    with rec.cond:
                        while key not in rec.seen and time.monotonic() < deadline:
                            rec.cond.wait(0.5)
            # The commit's wall time: the first node's record of it (as scripts/bench-latency).
            commit_at: dict[int, float] = {}
            for nid in c.nodes:
                for rev, at in http("GET", f"{c.url(nid)}/v1/debug/timings?since=1").body["commits"]:
                    commit_at[rev] = min(at, commit_at.get(rev, at))
            for key, rev in revisions.items():
                samples.append(max(rec.seen[key] for rec in recs.values()) - commit_at[rev])
            print(
                f"PUT round trip (for scale): p50 {1000 * pct(put_samples, 0.5):.1f} ms, "
                f"p99 {1000 * pct(put_samples, 0.99):.1f} ms"
            )
            out["commit_to_agents_ms"] = {"p50": 1000 * pct(samples, 0.5), "p99": 1000 * pct(samples, 0.99)}
            print(
                f"commit -> applied in all 3 agents ({args.writes} writes): "
                f"p50 {out['commit_to_agents_ms']['p50']:.1f} ms, p99 {out['commit_to_agents_ms']['p99']:.1f} ms"
            )
            # 3. failure -> fenced (before the big load, to keep each trial small)
            fence_samples = []
            for i in range(args.trials):
                key = f"fail{i}"
                after = last_seq(c.url("n2"))
                assert put(c.url("n1"), key)[0] == 200
                ev = wait_for(lambda after=after: fenced_event(c.url("n2"), after), 10, "fenced event on n2")
                fence_samples.append(ev["at"] - recs["n2"].failed_at[key])
                http("DELETE", f"{c.url('n1')}/v1/tables/pools/{key}")
                wait_for(lambda: not c.status("n2")["fences"], 10, "unfenced on n2")
            out["failure_to_fenced_ms"] = {
                "p50": 1000 * pct(fence_samples, 0.5),
                "p99": 1000 * pct(fence_samples, 0.99),
            }
            print(
                f"agent callback failure -> consumer fenced ({args.trials} trials): "
                f"p50 {out['failure_to_fenced_ms']['p50']:.1f} ms, p99 {out['failure_to_fenced_ms']['p99']:.1f} ms"
            )
            # 2. load of --rows rows into a fresh agent
            for start in range(0, args.rows, 128):
                ops = [
                    {"op": "put", "key": f"tables/pools/r{j}", "value": {"name": f"r{j}"}}
                    for j in range(start, min(args.rows, start + 128))
                ]
                for _ in range(50):  # a leader change on this loaded host answers 503: the same puts again
                    status, body = request("POST", f"{c.url('n1')}/v1/txn", {"success": ops})
                    if status != 503:
                        break
                    time.sleep(0.1)
                assert status == 200, body
            last = int(body["revision"])

            def settled() -> bool:  # every node and agent past the bulk load: the load below measures only itself
                return all(c.status(nid)["agents"]["bench"]["applied_revision"] >= last for nid in c.nodes)

            wait_for(settled, 180, "every agent past the bulk load", interval=0.2)
            t0 = time.monotonic()
            status, body = request("GET", f"{c.url('n3')}/v1/agents/bench/load", None)
            get_s = time.monotonic() - t0
            assert status == 200, body
            print(f"GET load of {len(body['tables']['pools'])} rows (node + JSON, for scale): {get_s:.2f} s")
            fresh = Recorder()
            t0 = time.monotonic()
            a = agent(c.url("n3"), fresh)
            a.start()
            wait_for(lambda: a.loaded, 60, "the fresh agent loaded", interval=0.005)
            load_s = time.monotonic() - t0
            rows = len(a.rows("pools"))
            a.stop()
            out["load"] = {"rows": rows, "seconds": load_s, "get_seconds": get_s}
            print(f"load of {rows} rows into a fresh agent: {load_s:.2f} s")
            print(json.dumps(out))
        finally:
            for a in agents.values():
                a.stop()
            c.close()
    return 0


def request(method: str, url: str, body: Any) -> tuple[int, Any]:
    r = http(method, url, body, timeout=30)
    return r.status, r.body


def put(url: str, key: str) -> tuple[int, Any]:
    return request("PUT", f"{url}/v1/tables/pools/{key}", {"name": key})


def last_seq(url: str) -> int:
    events = http("GET", f"{url}/v1/events").body["events"]
    return max((e["seq"] for e in events), default=0)


def fenced_event(url: str, after: int) -> dict[str, Any] | None:
    events = http("GET", f"{url}/v1/events?after_seq={after}").body["events"]
    return next((e for e in events if e["type"] == "fenced" and e["fence"]["table"] == "agent:bench"), None)


if __name__ == "__main__":
    sys.exit(main())
