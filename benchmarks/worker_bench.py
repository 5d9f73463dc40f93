"""CPU of one blade-worker iteration per commit, in-process: the work every node does for
every commit it applies, whatever the commit wrote.

    .venv/bin/python benchmarks/worker_bench.py [--commits 300] [--writes-per-commit 46]
                                                [--rounds 3]

A one-node ``ReplicatedStore`` (real Raft, journal and fsync, on a temporary directory)
and the ``BladeRuntime`` of the ONTAP app on it. Each commit is ``--writes-per-commit``
key-value writes outside every table (as ``scripts/bench-etcd`` writes; 46 is about what
one log entry carried there); then one worker iteration runs (``_iteration``: the
resync engine's incremental run over the 7 blade tables, the fencing policy, the lag and
quorum checks) and its thread CPU time is taken. Prints p50, mean and p90 per round.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node._runtime import BladeRuntime, _LoopState
from node.launcher import free_ports
from rdb import NoQuorum, ReplicatedStore


async def _leader(store: ReplicatedStore) -> None:
    for _ in range(200):
        try:
            if (await store.put("bench-warm", 0, timeout=2))["status"] == "ok":
                return
        except NoQuorum:
            await asyncio.sleep(0.05)
    raise SystemExit("the one-node store elected no leader")


async def one_round(commits: int, per_commit: int) -> list[float]:
    """The thread CPU seconds of ``commits`` worker iterations."""
    data = tempfile.mkdtemp(prefix="worker-bench-")
    store = ReplicatedStore(f"127.0.0.1:{free_ports(1)[0]}", [], data, password="bench")
    store.start(asyncio.get_running_loop())
    try:
        await _leader(store)
        runtime = BladeRuntime("n1", store)
        state = _LoopState(next_audit=runtime.clock() + 3600.0)  # no audit within the run
        for _ in range(3):  # the load run, and the first incremental ones
            await runtime._iteration(state)
        times = []
        for c in range(commits):
            await asyncio.gather(*(store.put(f"bench/k{c}-{w}", "x" * 64) for w in range(per_commit)))
            started = time.thread_time()
            await runtime._iteration(state)
            times.append(time.thread_time() - started)
        return times
    finally:
        store.close()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commits", type=int, default=300)
    p.add_argument("--writes-per-commit", type=int, default=46)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"worker iteration CPU per commit ({args.writes_per_commit} key-value writes outside the tables)")
    for r in range(args.rounds):
        times = sorted(asyncio.run(one_round(args.commits, args.writes_per_commit)))
        p50, mean, p90 = statistics.median(times), statistics.mean(times), times[int(len(times) * 0.9)]
        print(f"  round {r + 1}: p50 {p50 * 1e6:.0f} us, mean {mean * 1e6:.0f} us, p90 {p90 * 1e6:.0f} us")


if __name__ == "__main__":
    main()
