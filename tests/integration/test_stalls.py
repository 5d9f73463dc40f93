"""The tick thread keeps ticking while data grows (issue 8.6, 9.6).

Stalls are measured with a probe of the gaps between the tick thread's ticks (an
on-tick callback records ``time.monotonic()``), never with wall-clock sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from rdb import ReplicatedStore
from rdb._raft import load_snapshot
from rdb._state import SNAPSHOT_FORMAT
from tests.integration.cluster import free_ports, http, running_cluster

pytestmark = pytest.mark.integration

#: Encoding this many 256-byte keys on the tick thread holds it about 0.3 s of CPU (the
#: snapshot thread meanwhile: 0.03-0.05 s between two ticks).
KEYS = 500_000
MAX_TICK_GAP = 0.15


def _bulk_snapshot(n: int, revision: int = 1) -> bytes:
    value = "v" * 256
    doc = {
        "format": SNAPSHOT_FORMAT,
        "revision": revision,
        "applied_index": 0,
        "compacted": 0,
        "kvs": [[f"key/{i:08d}", value, 1, 1, 1] for i in range(n)],
        "history": [],
        "dedup": [],
        "staging": None,
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


class TickProbe:
    """Records when the tick thread ran its callbacks (tick thread), in wall time and in
    process CPU time. A stall is CPU time the process spent between two ticks: another
    thread (or the tick thread itself, encoding) held the GIL; a loaded host that runs
    nobody does not count."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def __call__(self) -> None:
        self.times.append((time.monotonic(), time.process_time()))

    def max_gap(self, start: tuple[float, float], end: tuple[float, float]) -> float:
        """The longest stall between ``start`` and ``end`` (``(wall, cpu)`` pairs)."""
        inside = [cpu for wall, cpu in self.times if start[0] <= wall <= end[0]]
        return max(b - a for a, b in itertools.pairwise([start[1], *inside, end[1]]))


@pytest.fixture
def single(tmp_path: Any) -> Iterator[ReplicatedStore]:
    (port,) = free_ports(1)
    store = ReplicatedStore(f"127.0.0.1:{port}", [], str(tmp_path / "n0"), password="pw")
    yield store
    store.close()


async def _wait(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_tick_thread_keeps_ticking_while_a_big_snapshot_is_written(
    single: ReplicatedStore, tmp_path: Any
) -> None:
    single._sm.restore(_bulk_snapshot(KEYS), strict=False)  # state that is not in the log
    single.start(asyncio.get_running_loop())
    assert (await single.put("first", 1))["status"] == "ok"
    probe = TickProbe()
    single.raft.addOnTickCallback(probe)
    await _wait(lambda: len(probe.times) > 5, 30, "ticks")
    written = single.status().snapshots_written
    start = (time.monotonic(), time.process_time())
    single.raft.forceLogCompaction()
    # Writes keep committing meanwhile (and are not in the snapshot being written).
    writes = 0
    while single.status().snapshots_written == written:
        assert time.monotonic() - start[0] < 120, "the snapshot was never written"
        assert (await single.put(f"during{writes}", writes, timeout=10))["status"] == "ok"
        writes += 1
    end = (time.monotonic(), time.process_time())
    gap = probe.max_gap(start, end)
    seconds = single.status().snapshot_seconds_last
    assert gap < MAX_TICK_GAP, f"tick thread stalled {gap:.3f} s of CPU during a {seconds:.3f} s snapshot"
    assert writes > 0
    state, last, _prev, _cluster = load_snapshot(str(tmp_path / "n0" / "raft.snapshot"))
    doc = msgpack.unpackb(state, raw=False)
    assert len(doc["kvs"]) == KEYS + 1  # the freeze point: the bulk keys and "first"
    assert doc["applied_index"] == last[1]


async def test_nodes_compact_at_staggered_indexes(tmp_path: Any) -> None:
    every = 60
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    loop = asyncio.get_running_loop()
    stores = [
        ReplicatedStore(
            a, [b for b in addrs if b != a], str(tmp_path / f"s{i}"), password="pw", compaction_entries=every
        )
        for i, a in enumerate(addrs)
    ]
    for s in stores:
        s.start(loop)
    try:
        for i in range(8 * every):
            assert (await stores[i % 3].put(f"k{i}", i))["status"] == "ok"
        serializers = [s.raft._SyncObj__serializer for s in stores]
        await _wait(lambda: all(len(z.compacted_at) >= 5 for z in serializers), 30, "compactions")
        at = {s._raft_address: sorted(z.compacted_at) for s, z in zip(stores, serializers, strict=True)}
        # Each node compacts once per interval, on its own grid, every / 3 entries from
        # the others'.
        for a in addrs:
            assert all(y - x >= every // 2 for x, y in zip(at[a], at[a][1:], strict=False)), at
        # (The median: a node whose tick lagged compacts a little late now and then.)
        for a in addrs:
            for b in addrs:
                if a != b:
                    closest = sorted(min(abs(x - y) for y in at[b]) for x in at[a])
                    assert closest[len(closest) // 2] >= every // 6, (a, b, at)
        for s in stores:
            await s.linearizable_barrier(timeout=15)
            assert s.get(f"k{8 * every - 1}") is not None
    finally:
        for s in stores:
            s.close()


def test_a_large_restore_goes_in_entries_and_reports_progress(tmp_path: Any) -> None:
    rows = 60_000
    with running_cluster(str(tmp_path), 3) as c:
        leader = c.leader()
        term = c.status(leader)["term"]
        url = c.url(leader)
        seen: list[dict[str, Any]] = []
        stop = threading.Event()

        def watch_progress() -> None:
            while not stop.is_set():
                report = http("GET", f"{url}/v1/status").body.get("restore")
                if report is not None and (not seen or seen[-1] != report):
                    seen.append(report)
                stop.wait(0.01)

        watcher = threading.Thread(target=watch_progress, daemon=True)
        watcher.start()
        try:
            answer = http("POST", f"{url}/v1/restore", raw=_bulk_snapshot(rows), timeout=120)
        finally:
            stop.set()
            watcher.join(10)
        assert answer.status == 200, answer.body
        assert answer.body["restored_keys"] >= rows
        assert answer.body["entries"] > rows // 2_000  # begin, entries of rows, commit
        final = http("GET", f"{url}/v1/status").body["restore"]
        assert final["state"] == "done" and final["rows_applied"] == final["rows_total"] == rows
        partial = [r for r in seen if r["state"] == "applying" and 0 < r["rows_applied"] < rows]
        assert partial, seen  # progress was visible while the restore ran
        assert [r["rows_applied"] for r in partial] == sorted(r["rows_applied"] for r in partial)
        for nid in c.nodes:
            got = http("GET", f"{c.url(nid)}/v1/kv/key/{rows - 1:08d}?consistency=linearizable")
            assert got.status == 200, got.body
        assert c.status(leader)["term"] == term  # no election on the way
