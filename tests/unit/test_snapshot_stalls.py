"""Snapshots encoded off the apply lock, and restores applied in rows (issue 8.6, 9.6)."""

from __future__ import annotations

import gc
import itertools
import random
import threading
import time
from typing import Any

import msgpack
import pytest

from rdb import Reference, StateMachine
from rdb import _commands as cmds
from rdb._raft import compaction_point, dump_snapshot, load_snapshot, write_snapshot
from rdb._state import SNAPSHOT_FORMAT
from rdb._store import restore_plan
from tests.unit.test_state_machine import Node, build_rich_state, contents, restored

# =========================================================================== snapshot source


def _legacy_snapshot(sm: StateMachine) -> bytes:
    """The snapshot as one msgpack document, as it was encoded before pieces."""
    live = sm._history[sm._history_start :]

    def row(kv: Any) -> list[Any]:
        return [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version]

    doc = {
        "format": SNAPSHOT_FORMAT,
        "revision": sm.revision,
        "applied_index": sm.applied_index,
        "compacted": sm.compacted_revision,
        "kvs": [row(kv) for kv in sm._data.values()],
        "history": [[e.revision, e.type, row(e.kv), None if e.prev_kv is None else row(e.prev_kv)] for e in live],
        "dedup": list(sm._dedup.items()),
        "staging": None,
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


def test_snapshot_pieces_join_to_the_same_document() -> None:
    node = build_rich_state()
    for i in range(5000):  # several batches of rows, history and request ids
        node.put(f"bulk/{i}", i)
    pieces = list(node.sm.snapshot_source().chunks(batch=100))
    assert len(pieces) > 100
    assert b"".join(pieces) == _legacy_snapshot(node.sm)
    assert contents(restored(b"".join(pieces))) == contents(node.sm)


def test_snapshot_source_does_not_see_later_commands() -> None:
    node = build_rich_state()
    before = node.sm.snapshot()
    source = node.sm.snapshot_source()
    node.put("cfg/a", "changed")
    node.delete("zz")
    node.put("new", 1)
    node.apply(cmds.restore_row_commands([["r", 1, 1, 1, 1]], 1, "u")[0])  # staging begins
    assert b"".join(source.chunks()) == before


def test_streamed_snapshot_file_loads_like_a_dumped_one(tmp_path: Any) -> None:
    node = build_rich_state()
    state = node.sm.snapshot()
    streamed, dumped = str(tmp_path / "a"), str(tmp_path / "b")
    write_snapshot(streamed, node.sm.snapshot_source().chunks(batch=2), (9, 7, 3), (8, 6, 3), ["x:1", "y:2"])
    dump_snapshot(dumped, state, (9, 7, 3), (8, 6, 3), ["x:1", "y:2"])
    assert load_snapshot(streamed) == load_snapshot(dumped) == (state, [9, 7, 3], [8, 6, 3], ["x:1", "y:2"])


# =========================================================================== staggered compaction


@pytest.mark.parametrize("members", [1, 3, 5])
def test_compaction_points_are_staggered_across_nodes(members: int) -> None:
    every = 20_000

    def points(rank: int) -> list[int]:
        out, first = [], 1
        for _ in range(5):
            first = compaction_point(first, every, rank, members)
            out.append(first)
        return out

    grids = [points(rank) for rank in range(members)]
    for grid in grids:  # one compaction per interval
        assert all(b - a == every for a, b in itertools.pairwise(grid))
        assert grid[0] <= every
    for a, b in itertools.combinations(grids, 2):
        assert min(abs(x - y) for x in a for y in b) >= every // members
    # Where a node is in its interval does not matter: the next point is on its grid.
    assert compaction_point(12_345, every, 1, 3) == 26_666
    assert compaction_point(26_666, every, 1, 3) == 46_666


# =========================================================================== restore in rows


def _rows(n: int, value_bytes: int = 100, prefix: str = "key/") -> list[list[Any]]:
    return [[f"{prefix}{i:06d}", "v" * value_bytes, 1, 1 + i % 3, 1] for i in range(n)]


def _apply_all(node: Node, commands: list[bytes]) -> list[dict[str, Any]]:
    return [node.apply(c) for c in commands]


def test_a_big_restore_is_many_entries_each_under_the_limits() -> None:
    rows = _rows(20_000, value_bytes=200)
    commands = cmds.restore_row_commands(rows, 5, "u")
    bodies = commands[1:-1]
    assert len(bodies) >= 10
    overhead = 1024
    assert all(len(c) <= cmds.RESTORE_CHUNK_BYTES + overhead for c in commands)
    assert all(len(msgpack.unpackb(c)["rows"]) <= cmds.RESTORE_ROWS_PER_ENTRY for c in bodies)
    node = Node()
    node.put("old", 1)
    results = _apply_all(node, commands)
    assert all(r["status"] == "ok" for r in results), results[-1]
    assert results[-1]["restored_keys"] == 20_000
    assert [kv.key for kv in contents(node.sm)] == [r[0] for r in rows]
    assert node.sm.get("old") is None
    assert node.sm.revision == 6  # max(current 1, snapshot 5) + 1


def test_restore_in_rows_matches_the_chunked_form() -> None:
    source = build_rich_state()
    snapshot = source.sm.snapshot()
    by_chunks, by_rows = Node(), Node()
    for n in (by_chunks, by_rows):
        for i in range(7):
            n.put(f"members/{i}", i)
            n.put(f"other{i}", i)
    last_chunks = _apply_all(by_chunks, cmds.restore_commands(snapshot, "u", keep_prefix="members/"))[-1]
    plan = restore_plan(snapshot)
    commands = cmds.restore_row_commands(plan.rows, plan.revision, "u", keep_prefix="members/")
    last_rows = _apply_all(by_rows, commands)[-1]
    assert last_rows == last_chunks
    assert contents(by_rows.sm) == contents(by_chunks.sm)
    assert by_rows.sm.get("members/3") is not None and by_rows.sm.get("other3") is None
    assert by_rows.sm.revision == by_chunks.sm.revision
    assert by_rows.sm.compacted_revision == by_chunks.sm.compacted_revision
    assert by_rows.sm.snapshot_source().kvs  # a consistent state to snapshot again


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["b", 1, 1, 1, 1], ["a", 1, 1, 1, 1]], "out of key order"),
        ([["a", 1, 1, 1, 1], ["a", 2, 1, 1, 1]], "out of key order"),
        ([["a", 1, 1, 9, 1]], "out of range"),
        ([["", 1, 1, 1, 1]], "bad key"),
        ([["a", 1, 1, 1]], "5 fields"),
    ],
)
def test_a_bad_row_rejects_the_whole_restore(rows: list[list[Any]], message: str) -> None:
    node = Node()
    node.put("keep", 1)
    results = _apply_all(node, cmds.restore_row_commands(rows, 5, "u"))
    assert any(message in r.get("message", "") for r in results), results
    assert results[-1]["status"] == "invalid"
    assert [kv.key for kv in contents(node.sm)] == ["keep"] and node.sm.revision == 1


def test_a_restore_missing_an_entry_is_refused() -> None:
    node = Node()
    node.put("keep", 1)
    commands = cmds.restore_row_commands(_rows(5000), 5, "u")
    assert len(commands) > 3
    results = _apply_all(node, [commands[0], *commands[2:]])
    assert results[-1]["status"] == "invalid" and "incomplete" in results[-1]["message"]
    assert [kv.key for kv in contents(node.sm)] == ["keep"]


def test_restore_parts_may_arrive_in_any_order() -> None:
    # A proposer keeps several entries in flight; a retry may land after a later one.
    rows = _rows(9000)
    commands = cmds.restore_row_commands(rows, 5, "u")
    parts = commands[1:-1]
    assert len(parts) >= 4
    node = Node()
    results = _apply_all(node, [commands[0], *parts[::-1], parts[1], commands[-1]])  # one twice, too
    assert results[-1]["status"] == "ok", results
    assert [kv.key for kv in contents(node.sm)] == [r[0] for r in rows]


def test_restore_parts_out_of_key_order_are_refused() -> None:
    low, high = _rows(10, prefix="a/"), _rows(10, prefix="b/")
    swapped = [
        *cmds.restore_row_commands(high + low, 5, "u")[:1],
        *cmds.restore_row_commands(high, 5, "u")[1:-1],  # part 0: b/...
        *cmds.restore_row_commands(high + low, 5, "u")[-1:],
    ]
    # Hand-made: part 0 holds the b/ keys, part 1 the a/ keys.
    part1 = msgpack.unpackb(cmds.restore_row_commands(low, 5, "u")[1], raw=False)
    part1.update(seq=1, rid="u:1")
    node = Node()
    node.put("keep", 1)
    begin = msgpack.unpackb(swapped[0], raw=False)
    begin.update(parts=2)
    results = _apply_all(
        node,
        [msgpack.packb(begin), swapped[1], msgpack.packb(part1, use_bin_type=True), swapped[-1]],
    )
    assert results[-1]["status"] == "invalid" and "out of key order" in results[-1]["message"], results
    assert [kv.key for kv in contents(node.sm)] == ["keep"]


def test_restore_in_rows_checks_references_at_commit() -> None:
    refs = [Reference("vol/", "agg", "agg/")]
    good = [["agg/a", {}, 1, 1, 1], ["vol/1", {"agg": "a"}, 1, 1, 1]]
    bad = [["agg/a", {}, 1, 1, 1], ["vol/1", {"agg": "b"}, 1, 1, 1]]
    node = Node(StateMachine(references=refs))
    result = _apply_all(node, cmds.restore_row_commands(bad, 5, "u1"))[-1]
    assert result["status"] == "invalid" and "vol/1 needs agg/b" in result["message"]
    assert _apply_all(node, cmds.restore_row_commands(good, 5, "u2"))[-1]["status"] == "ok"
    assert node.sm.children("agg/a") == {"vol/1"}
    assert node.delete("agg/a")["status"] == "constraint"  # the index came with the restore


def test_a_restore_in_rows_under_way_survives_a_snapshot() -> None:
    node = Node()
    node.put("a", 1)
    commands = cmds.restore_row_commands(_rows(5000), 5, "u")
    half = len(commands) // 2
    _apply_all(node, commands[:half])
    twin = Node(restored(node.sm.snapshot()))
    twin._rids = itertools.count(500)
    assert all(r["status"] == "ok" for r in _apply_all(twin, commands[half:]))
    assert len(twin.sm) == 5000 and twin.sm.get("a") is None


# =========================================================================== checking off the GIL


class _ThreadProbe:
    """A thread that wakes every millisecond and records the most CPU time the process
    spent between two of its wakes: how long another thread held the GIL at a stretch.
    (Process CPU time, not wall time: a loaded host that runs nobody does not count.)"""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.process_time()
        while not self._stop.wait(0.001):
            now = time.process_time()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def __enter__(self) -> _ThreadProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("shuffled", [False, True])
def test_checking_a_big_upload_lets_other_threads_run(shuffled: bool) -> None:
    # One msgpack call for the whole document (and one sort) held the GIL about 1.5 s.
    rows = _rows(400_000, value_bytes=200)
    if shuffled:
        random.Random(7).shuffle(rows)
    doc = msgpack.unpackb(StateMachine().snapshot(), raw=False)
    doc.update(revision=5, kvs=rows)
    upload = msgpack.packb(doc, use_bin_type=True)
    del rows, doc  # as in a node: the upload is one bytes object
    gc.collect()
    with _ThreadProbe() as probe:
        started = time.monotonic()
        worker = threading.Thread(target=lambda: plans.append(restore_plan(upload)))
        plans: list[Any] = []
        worker.start()
        worker.join(120)
        took = time.monotonic() - started
    assert plans and len(plans[0].rows) == 400_000
    assert [r[0] for r in plans[0].rows[:3]] == ["key/000000", "key/000001", "key/000002"]
    assert probe.max_gap < 0.2, f"another thread waited {probe.max_gap:.3f} s of CPU (check took {took:.2f} s)"
