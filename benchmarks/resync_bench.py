"""Resync engine cost, in-process (no sockets): full resync of N rows, and incremental
resync per commit with tables of 1k, 10k and 100k rows.

    .venv/bin/python benchmarks/resync_bench.py [--full-rows 100000] [--sizes 1000,10000,100000]

Uses the real pieces: rdb.StateMachine (with the management tables' references), the
D-blade/N-blade projections of node._blades and resync.ResyncEngine. Prints figures and
the first bars of DESIGN.md (full 100k <= 2 s; incremental flat across sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rdb import StateMachine
from rdb._commands import put, txn
from resync import ResyncEngine
from tests.ontap import REFERENCES, TABLES, build_blades

T = TypeVar("T")


class Store:
    """The engine's ConsistentReader over a plain StateMachine."""

    def __init__(self) -> None:
        self.sm = StateMachine(references=REFERENCES, history_limit=100_000)
        self.index = 0

    def read(self, fn: Callable[[Any], T]) -> T:
        return fn(self.sm)

    def apply(self, command: bytes) -> dict[str, Any]:
        self.index += 1
        return self.sm.apply(command, self.index)


def volume(i: int, aggregate: str) -> dict[str, Any]:
    return {
        "name": f"vol{i}",
        "vserver": "vs",
        "aggregate": aggregate,
        "size_mb": 10,
        "state": "online",
        "junction_path": f"/vol{i}",
        "export_policy": "default",
    }


def populate(store: Store, rows: int) -> None:
    store.apply(
        put(
            TABLES["vservers"].storage_key("vs"),
            {"name": "vs", "state": "running", "protocols": ["nfs"], "root_volume": None},
            request_id="vs",
        )
    )
    store.apply(
        put(TABLES["aggregates"].storage_key("a1"), {"name": "a1", "home_node": "n1", "size_mb": 1}, request_id="a1")
    )
    for start in range(0, rows, 100):
        ops = [
            {"op": "put", "key": TABLES["volumes"].storage_key(f"vol{i}"), "value": volume(i, "a1")}
            for i in range(start, min(rows, start + 100))
        ]
        store.apply(txn([], ops, [], request_id=f"fill{start}"))


async def full_resync(rows: int) -> dict[str, float]:
    store = Store()
    populate(store, rows)
    blades = build_blades("n1")
    table = blades["dblade"]["volumes"]
    engine = ResyncEngine(store, [table], clock=time.perf_counter, action_timeout=600)
    t0 = time.perf_counter()
    [outcome] = await engine.resync("volumes", "load")
    first = time.perf_counter() - t0
    assert outcome.ok and len(table.rows()) == rows, outcome
    t0 = time.perf_counter()
    [again] = await engine.resync("volumes", "audit")
    compare = time.perf_counter() - t0
    assert again.ok and not again.actions
    return {"rows": rows, "full_from_empty_s": first, "full_compare_only_s": compare}


async def incremental(rows: int, commits: int) -> dict[str, float]:
    store = Store()
    populate(store, rows)
    blades = build_blades("n1")
    tables = [t for b in blades.values() for t in b.values()]
    engine = ResyncEngine(store, tables, clock=time.perf_counter, action_timeout=600)
    await engine.run_pending()  # the initial load
    samples = []
    for i in range(commits):
        store.apply(
            put(
                TABLES["volumes"].storage_key(f"vol{i % rows}"),
                {**volume(i % rows, "a1"), "size_mb": i + 11},
                request_id=f"inc{i}",
            )
        )
        t0 = time.perf_counter()
        outcomes = await engine.run_pending()
        samples.append(time.perf_counter() - t0)
        assert all(o.ok for o in outcomes)
    samples.sort()
    return {
        "rows": rows,
        "mean_ms": statistics.mean(samples) * 1000,
        "p50_ms": samples[len(samples) // 2] * 1000,
        "p99_ms": samples[int(len(samples) * 0.99) - 1] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-rows", type=int, default=100_000)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--commits", type=int, default=300)
    args = parser.parse_args(argv)
    print(f"[resync-bench] full resync of {args.full_rows} rows (D-blade volumes)...", flush=True)
    full = asyncio.run(full_resync(args.full_rows))
    print(
        f"  full resync from empty: {full['full_from_empty_s']:.3f} s   (first bar <= 2 s: "
        f"{'PASS' if full['full_from_empty_s'] <= 2 else 'FAIL'})"
    )
    print(f"  full audit, nothing to change: {full['full_compare_only_s']:.3f} s")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"[resync-bench] incremental resync per commit, {size} rows, {args.commits} commits...", flush=True)
        results.append(asyncio.run(incremental(size, args.commits)))
    print(f"\n{'rows':>8}  {'mean ms':>8}  {'p50 ms':>8}  {'p99 ms':>8}")
    for r in results:
        print(f"{r['rows']:>8}  {r['mean_ms']:>8.3f}  {r['p50_ms']:>8.3f}  {r['p99_ms']:>8.3f}")
    ratio = results[-1]["p50_ms"] / results[0]["p50_ms"]
    flat = ratio < 2.0
    print(
        f"incremental p50 at {results[-1]['rows']} rows / at {results[0]['rows']} rows: {ratio:.2f}x "
        f"(flat means < 2x: {'PASS' if flat else 'FAIL'})"
    )
    return 0 if flat and full["full_from_empty_s"] <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
