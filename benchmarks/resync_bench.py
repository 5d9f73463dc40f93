"""Resync engine cost, in-process (no sockets): full resync of N rows, and incremental
resync per commit with tables of 1k, 10k and 100k rows, for each shipped app.

    .venv/bin/python benchmarks/resync_bench.py [--apps ontap,proxy] [--full-rows 100000]
                                                [--sizes 1000,10000,100000]

Uses the real pieces: rdb.StateMachine (with the app's references), the app's blade
projections as the runtime builds them (node._blades from the app's declarations) and
resync.ResyncEngine. ONTAP: the D-blade volumes (a filter through a join to aggregates);
proxy: the routes (a filter and a transform through a join to listeners). Prints figures
and the first bars of DESIGN.md (full 100k <= 2 s; incremental flat across sizes); "cpu"
is the process time, steadier than wall time on a shared machine.
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

from apps.ontap import app as ontap_app
from apps.proxy import app as proxy_app
from node._blades import build_blades
from node._tables import TableRegistry
from node.app import App
from rdb import StateMachine
from rdb._commands import put, txn
from resync import ResyncEngine

T = TypeVar("T")


class Store:
    """The engine's ConsistentReader over a plain StateMachine."""

    def __init__(self, registry: TableRegistry) -> None:
        self.sm = StateMachine(references=registry.references, history_limit=100_000)
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


class Scenario:
    """One app's bench: how to fill its source table, which blade table to time, and one
    incremental change."""

    def __init__(self, app: App, blade: str, table: str, source: str) -> None:
        self.app = app
        self.registry = TableRegistry(app)
        self.blade, self.table, self.source = blade, table, source

    def parents(self) -> list[tuple[str, str, dict[str, Any]]]:
        raise NotImplementedError

    def row(self, i: int, version: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def populate(self, store: Store, rows: int) -> None:
        for table, key, value in self.parents():
            store.apply(put(self.registry[table].storage_key(key), value, request_id=f"{table}/{key}"))
        prefix = self.registry[self.source]
        for start in range(0, rows, 100):
            ops = [
                {"op": "put", "key": prefix.storage_key(self.key(i)), "value": self.row(i)}
                for i in range(start, min(rows, start + 100))
            ]
            store.apply(txn([], ops, [], request_id=f"fill{start}"))

    def key(self, i: int) -> str:
        return self.registry[self.source].key_of(self.row(i))

    def change(self, i: int, rows: int) -> bytes:
        return put(
            self.registry[self.source].storage_key(self.key(i % rows)),
            self.row(i % rows, version=i + 1),
            request_id=f"inc{i}",
        )


class Ontap(Scenario):
    def __init__(self) -> None:
        super().__init__(ontap_app, "dblade", "volumes", "volumes")

    def parents(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            ("vservers", "vs", {"name": "vs", "state": "running", "protocols": ["nfs"], "root_volume": None}),
            ("aggregates", "a1", {"name": "a1", "home_node": "n1", "size_mb": 1}),
        ]

    def row(self, i: int, version: int = 0) -> dict[str, Any]:
        return {**volume(i, "a1"), "size_mb": 10 + version}


class Proxy(Scenario):
    def __init__(self) -> None:
        super().__init__(proxy_app, "proxy", "routes", "routes")

    def parents(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (
                "listeners",
                "l1",
                {"name": "l1", "address": "10.0.0.1", "port": 80, "protocol": "http", "home_node": "n1"},
            ),
            ("pools", "p1", {"name": "p1", "algorithm": "round_robin"}),
        ]

    def row(self, i: int, version: int = 0) -> dict[str, Any]:
        return {
            "listener": "l1",
            "name": f"r{i}",
            "pool": "p1",
            "host": "*",
            "path_prefix": f"/r{i}",
            "priority": 100 + version % 1000,
        }


SCENARIOS: dict[str, Callable[[], Scenario]] = {"ontap": Ontap, "proxy": Proxy}


async def full_resync(scenario: Scenario, rows: int) -> dict[str, float]:
    store = Store(scenario.registry)
    scenario.populate(store, rows)
    blades = build_blades(scenario.app, scenario.registry, "n1")
    table = blades[scenario.blade][scenario.table]
    engine = ResyncEngine(store, [table], clock=time.perf_counter, action_timeout=600)
    t0, c0 = time.perf_counter(), time.process_time()
    [outcome] = await engine.resync(scenario.table, "load")
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert outcome.ok and len(table.rows()) == rows, outcome
    t0 = time.perf_counter()
    [again] = await engine.resync(scenario.table, "audit")
    compare = time.perf_counter() - t0
    assert again.ok and not again.actions
    return {
        "rows": rows,
        "full_from_empty_s": first,
        "full_from_empty_cpu_s": first_cpu,
        "full_compare_only_s": compare,
    }


async def incremental(scenario: Scenario, rows: int, commits: int) -> dict[str, float]:
    store = Store(scenario.registry)
    scenario.populate(store, rows)
    blades = build_blades(scenario.app, scenario.registry, "n1")
    tables = [t for b in blades.values() for t in b.values()]
    engine = ResyncEngine(store, tables, clock=time.perf_counter, action_timeout=600)
    await engine.run_pending()  # the initial load
    samples = []
    for i in range(commits):
        store.apply(scenario.change(i, rows))
        t0 = time.perf_counter()
        outcomes = await engine.run_pending()
        samples.append(time.perf_counter() - t0)
        assert all(o.ok for o in outcomes)
        assert outcomes, "the commit changed no blade table"
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
    parser.add_argument("--apps", default="ontap,proxy", help="comma-separated: ontap, proxy")
    args = parser.parse_args(argv)
    ok = True
    for name in args.apps.split(","):
        ok = run_app(SCENARIOS[name](), args) and ok
    return 0 if ok else 1


def run_app(scenario: Scenario, args: argparse.Namespace) -> bool:
    label = f"{scenario.app.name} {scenario.blade}/{scenario.table}"
    print(f"[resync-bench] {label}: full resync of {args.full_rows} rows...", flush=True)
    full = asyncio.run(full_resync(scenario, args.full_rows))
    print(
        f"  full resync from empty: {full['full_from_empty_s']:.3f} s (cpu {full['full_from_empty_cpu_s']:.3f} s)"
        f"   (first bar <= 2 s: {'PASS' if full['full_from_empty_s'] <= 2 else 'FAIL'})"
    )
    print(f"  full audit, nothing to change: {full['full_compare_only_s']:.3f} s")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"[resync-bench] {label}: incremental resync per commit, {size} rows, {args.commits} commits...")
        results.append(asyncio.run(incremental(scenario, size, args.commits)))
    print(f"\n{'rows':>8}  {'mean ms':>8}  {'p50 ms':>8}  {'p99 ms':>8}")
    for r in results:
        print(f"{r['rows']:>8}  {r['mean_ms']:>8.3f}  {r['p50_ms']:>8.3f}  {r['p99_ms']:>8.3f}")
    ratio = results[-1]["p50_ms"] / results[0]["p50_ms"]
    flat = ratio < 2.0
    print(
        f"incremental p50 at {results[-1]['rows']} rows / at {results[0]['rows']} rows: {ratio:.2f}x "
        f"(flat means < 2x: {'PASS' if flat else 'FAIL'})\n"
    )
    return flat and full["full_from_empty_s"] <= 2


if __name__ == "__main__":
    sys.exit(main())
