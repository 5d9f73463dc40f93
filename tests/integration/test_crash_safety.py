"""Crash safety of compaction, snapshot install and the journal, through real node
processes and the failpoints of ``rdb._failpoints`` (armed by ``RDBSYNC_FAILPOINTS``).

Every test: writes are acknowledged, a failpoint crashes (SIGKILL) or fails (ENOSPC) the
node at one precise step, the node restarts without failpoints, and every acknowledged
write must still be there. A node whose files cannot be used must refuse to start with
a message naming the file and what to do.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rdb._journal import DurableJournal
from rdb._raft import load_snapshot
from tests.integration.cluster import Cluster, http, wait_for

pytestmark = pytest.mark.integration

# A node writes about a dozen entries as it starts (more under load: elections), so
# a failpoint armed at the second compaction fires under the test's writes, not before.
COMPACTION = ["--compaction-entries", "25"]
COMPACTION_STEPS = [
    "snapshot.before_rename",
    "snapshot.after_rename",
    "journal.compact.before_header",
    "journal.compact.after_header",
]


def _log(c: Cluster, nid: str) -> str:
    with open(os.path.join(c.base_dir, f"{nid}.log"), errors="replace") as f:
        return f.read()


def _alive(c: Cluster, nid: str) -> bool:
    proc = c.nodes[nid].proc
    return proc is not None and proc.poll() is None


def _write_until(
    c: Cluster,
    targets: list[str],
    stop: threading.Event,
    *,
    writers: int,
    per_writer: int,
    into: dict[str, int] | None = None,
) -> dict[str, int]:
    """Concurrent PUTs spread over ``targets`` until ``stop`` or ``per_writer`` each;
    returns the acknowledged ones (200) as key -> value (also kept in ``into``)."""
    acked: dict[str, int] = {} if into is None else into
    lock = threading.Lock()

    def writer(w: int) -> None:
        for i in range(per_writer):
            if stop.is_set():
                return
            nid = targets[(w + i) % len(targets)]
            if not _alive(c, nid):
                continue
            key = f"w{w}-{i}"
            try:
                resp = http("PUT", f"{c.url(nid)}/v1/kv/{key}", {"value": i}, timeout=5)
            except OSError:
                continue  # the node died under this request: not acknowledged
            if resp.status == 200:
                with lock:
                    acked[key] = i

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))
    return acked


def _missing(c: Cluster, nid: str, acked: dict[str, int]) -> list[str]:
    listing = http("GET", f"{c.url(nid)}/v1/kv?prefix=w&limit=10000", timeout=10)
    assert listing.status == 200, listing.body
    found = {kv["key"]: kv["value"] for kv in listing.body["kvs"]}
    return sorted(k for k, v in acked.items() if found.get(k) != v)


def _restart_clean(c: Cluster, nids: list[str]) -> None:
    c.env.pop("RDBSYNC_FAILPOINTS", None)
    for nid in nids:
        c.start(nid)
    c.wait_ready(30, nodes=nids)


def _journal_entries(data_dir: str, scratch: str) -> dict[int, int]:
    """index -> term of the entries of a copy of ``data_dir``'s journal (recovered as a
    node would; the original is left alone)."""
    shutil.copytree(data_dir, scratch, dirs_exist_ok=True)
    journal = DurableJournal(os.path.join(scratch, "raft.journal"))
    try:
        return {int(journal[i][1]): int(journal[i][2]) for i in range(len(journal))}
    finally:
        journal.close_quietly()
        shutil.rmtree(scratch)


def snapshot_last_of(data_dir: str) -> int:
    path = os.path.join(data_dir, "raft.snapshot")
    return int(load_snapshot(path)[1][1]) if os.path.exists(path) else 0


def _journal_tail(data_dir: str, scratch: str) -> tuple[int, int, int]:
    """(last index, its term, the snapshot's last index) on disk."""
    entries = _journal_entries(data_dir, scratch)
    last = max(entries)
    return last, entries[last], snapshot_last_of(data_dir)


def _single(tmp_path: Any, failpoints: str) -> Cluster:
    c = Cluster(str(tmp_path), 1, env={"RDBSYNC_FAILPOINTS": failpoints}, extra_args=COMPACTION)
    c.start()
    c.wait_ready()
    return c


# ============================================================ compaction, one node


@pytest.mark.parametrize("step", COMPACTION_STEPS)
def test_crash_at_each_compaction_step_loses_no_acknowledged_write(tmp_path: Any, step: str) -> None:
    # The second compaction: the journal then holds a snapshot's worth of entries before
    # and after, and the writers keep the tick busy so acks land inside the window.
    c = _single(tmp_path, f"{step}=crash@2")
    try:
        stop = threading.Event()
        watcher = threading.Thread(target=lambda: (c.nodes["n1"].proc.wait(60), stop.set()))  # type: ignore[union-attr]
        watcher.start()
        acked = _write_until(c, ["n1"], stop, writers=8, per_writer=60)
        watcher.join(70)
        assert not _alive(c, "n1"), "the failpoint never fired"
        assert c.nodes["n1"].proc.returncode == -signal.SIGKILL  # type: ignore[union-attr]
        assert f"failpoint {step}: crash" in _log(c, "n1")
        assert acked
        on_disk = _journal_tail(c.nodes["n1"].data_dir, str(tmp_path / "copy"))
        _restart_clean(c, ["n1"])
        assert _missing(c, "n1", acked) == []
        # and it still compacts and serves afterwards
        assert http("PUT", f"{c.url('n1')}/v1/kv/after", {"value": 1}).status == 200
        c.stop("n1")
        # Every entry that was on disk at the crash is still there, with its term
        # (PySyncObj's loader kept only the snapshot's last two: a new term's entries
        # then took the indexes of committed ones).
        index, term, snapshot_last = on_disk
        if step == "snapshot.after_rename":
            return  # the crash is in the tick that applied the snapshot's last entry
        assert index > snapshot_last, "no entry beyond the snapshot was on disk at the crash"
        after = _journal_entries(c.nodes["n1"].data_dir, str(tmp_path / "copy2"))
        assert after.get(index) == term or snapshot_last_of(c.nodes["n1"].data_dir) >= index
    finally:
        c.close()


def test_enospc_in_the_journal_rewrite_stops_the_node_and_loses_nothing(tmp_path: Any) -> None:
    c = _single(tmp_path, "journal.compact.before_header=enospc@2")
    try:
        stop = threading.Event()
        watcher = threading.Thread(target=lambda: (c.nodes["n1"].proc.wait(60), stop.set()))  # type: ignore[union-attr]
        watcher.start()
        acked = _write_until(c, ["n1"], stop, writers=4, per_writer=30)
        watcher.join(70)
        # PySyncObj swallowed the error: the node kept acknowledging, and the restart
        # below lost everything after the snapshot. It must stop at once instead.
        assert not _alive(c, "n1"), "the node kept running after ENOSPC in its journal"
        assert c.nodes["n1"].proc.returncode == 74  # type: ignore[union-attr]
        assert "journal compaction" in _log(c, "n1") and "stopping this node" in _log(c, "n1")
        _restart_clean(c, ["n1"])
        assert _missing(c, "n1", acked) == []
    finally:
        c.close()


@pytest.mark.parametrize("step", ["journal.sync.before_write", "journal.sync.before_fsync"])
def test_enospc_in_group_commit_stops_the_node(tmp_path: Any, step: str) -> None:
    # @25: start-up itself commits a few entries (the app record, member registrations),
    # so an earlier hit can fire before the node is ready; the writes outnumber 25 syncs
    c = _single(tmp_path, f"{step}=enospc@25")
    try:
        stop = threading.Event()
        acked = _write_until(c, ["n1"], stop, writers=1, per_writer=80)
        wait_for(lambda: not _alive(c, "n1"), 15, "the node to stop")
        assert c.nodes["n1"].proc.returncode == 74  # type: ignore[union-attr]
        _restart_clean(c, ["n1"])
        assert _missing(c, "n1", acked) == []
    finally:
        c.close()


# ============================================================ compaction, whole cluster


@pytest.mark.parametrize(
    "step",
    [
        "snapshot.after_rename",
        "journal.compact.before_header",
        "journal.compact.after_header",
    ],
)
def test_cluster_crashing_in_compaction_then_killed_whole_loses_nothing(tmp_path: Any, step: str) -> None:
    """Every node compacts at about the same index: a power cut there must not lose an
    entry a majority acknowledged. Each node crashes at its own second compaction; once
    two are down the third is killed too. The two that crashed in compaction restart
    first and elect a leader between them (any restart order must be safe), then the
    third joins. A follower that forgot its tail here made PySyncObj lose writes."""
    env = {"RDBSYNC_FAILPOINTS": f"{step}=crash@2", "RDBSYNC_REQUEST_TIMEOUT": "2"}
    c = Cluster(str(tmp_path), 3, env=env, extra_args=COMPACTION)
    c.start()
    try:
        c.wait_ready()
        stop = threading.Event()

        def watch() -> None:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and sum(_alive(c, n) for n in c.nodes) > 1:
                time.sleep(0.01)
            stop.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        acked = _write_until(c, list(c.nodes), stop, writers=12, per_writer=400)
        watcher.join(100)
        for nid in c.nodes:  # the power cut
            if _alive(c, nid):
                c.signal(nid, signal.SIGKILL)
        crashed = [n for n in c.nodes if f"failpoint {step}: crash" in _log(c, n)]
        assert len(crashed) >= 2, f"only {crashed} reached the failpoint"
        assert acked
        first = crashed[:2]
        _restart_clean(c, first)
        c.leader(among=first, timeout=30)
        rest = [n for n in c.nodes if n not in first]
        _restart_clean(c, rest)
        c.leader(timeout=30)
        for nid in c.nodes:
            assert _missing(c, nid, acked) == [], f"{nid} lost acknowledged writes"
    finally:
        c.close()


def test_cluster_with_every_journal_rewrite_failing_stops_and_loses_nothing(tmp_path: Any) -> None:
    """ENOSPC on every node's journal rewrite: PySyncObj swallowed it, every node kept
    acknowledging with a snapshot ahead of its journal, and the restart after a power
    cut lost everything past each node's last snapshot. Each node must stop instead."""
    env = {"RDBSYNC_FAILPOINTS": "journal.compact.before_header=enospc@3+", "RDBSYNC_REQUEST_TIMEOUT": "2"}
    c = Cluster(str(tmp_path), 3, env=env, extra_args=COMPACTION)
    c.start()
    try:
        c.wait_ready()
        stop = threading.Event()

        acked: dict[str, int] = {}
        writers = threading.Thread(
            target=lambda: _write_until(c, list(c.nodes), stop, writers=6, per_writer=200, into=acked)
        )
        writers.start()
        # The power cut comes while writes are in flight: once two nodes stopped, or
        # (if they do not stop) after 150 acknowledged writes.
        wait_for(lambda: sum(_alive(c, n) for n in c.nodes) <= 1 or len(acked) >= 150, 90, "nodes to stop")
        codes = {n: c.nodes[n].proc.returncode for n in c.nodes}  # type: ignore[union-attr]
        for nid in c.nodes:  # the power cut
            if _alive(c, nid):
                c.signal(nid, signal.SIGKILL)
        stop.set()
        writers.join(30)
        acked = dict(acked)
        assert acked
        _restart_clean(c, list(c.nodes))
        c.leader(timeout=30)
        for nid in c.nodes:
            assert _missing(c, nid, acked) == [], f"{nid} lost acknowledged writes"
        assert list(codes.values()).count(74) >= 2, f"nodes kept running after ENOSPC in their journal: {codes}"
    finally:
        c.close()


# ============================================================ unusable files refuse to start


def _stopped_node_with_data(tmp_path: Any, writes: int, extra: list[str] | None = None) -> Cluster:
    c = Cluster(str(tmp_path), 1, extra_args=extra or [])
    c.start()
    c.wait_ready()
    for i in range(writes):
        assert http("PUT", f"{c.url('n1')}/v1/kv/w{i}", {"value": i}).status == 200
    c.stop("n1")  # a clean stop: the meta file records the commit index
    return c


def _refuses(c: Cluster, *needles: str) -> str:
    c.start("n1")
    proc = c.nodes["n1"].proc
    assert proc is not None
    code = proc.wait(30)
    log = _log(c, "n1")
    assert code == 65, log[-2000:]
    assert "refuses to start" in log and "remove its data directory" in log
    for needle in needles:
        assert needle in log, (needle, log[-2000:])
    return log


def test_truncated_snapshot_refuses_to_start(tmp_path: Any) -> None:
    c = _stopped_node_with_data(tmp_path, 30, COMPACTION)
    try:
        snapshot = os.path.join(c.nodes["n1"].data_dir, "raft.snapshot")
        size = os.path.getsize(snapshot)
        os.truncate(snapshot, size // 2)
        _refuses(c, snapshot, "truncated")
    finally:
        c.close()


def test_missing_snapshot_with_a_compacted_journal_refuses_to_start(tmp_path: Any) -> None:
    c = _stopped_node_with_data(tmp_path, 30, COMPACTION)
    try:
        data = c.nodes["n1"].data_dir
        os.unlink(os.path.join(data, "raft.snapshot"))
        _refuses(c, os.path.join(data, "raft.journal"), "no snapshot")
    finally:
        c.close()


def test_corrupt_committed_journal_record_refuses_to_start(tmp_path: Any) -> None:
    c = _stopped_node_with_data(tmp_path, 20)  # no compaction: every entry in the journal
    try:
        path = os.path.join(c.nodes["n1"].data_dir, "raft.journal")
        scratch = str(tmp_path / "scratch")
        shutil.copytree(c.nodes["n1"].data_dir, scratch)
        journal = DurableJournal(os.path.join(scratch, "raft.journal"))
        offset = journal._offsets[3]
        journal.close_quietly()
        with open(path, "r+b") as f:  # one flipped byte in the payload of record 4
            f.seek(offset + 30)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x55]))
        _refuses(c, path, f"offset {offset}", "below the commit index")
        # After the data is wiped the node starts (empty) again.
        shutil.rmtree(c.nodes["n1"].data_dir)
        c.start("n1")
        c.wait_ready(30)
    finally:
        c.close()


# ============================================================ snapshot install


@pytest.mark.parametrize(
    "step",
    [
        "snapshot.install.before_fsync",
        "snapshot.install.before_rename",
        "snapshot.install.after_rename",
        "snapshot.install.after_fsync",
        "journal.reset.before_rename",
        "journal.reset.after_rename",
    ],
)
def test_crash_during_snapshot_install_leaves_a_loadable_state(tmp_path: Any, step: str) -> None:
    c = Cluster(str(tmp_path), 3, env={"RDBSYNC_REQUEST_TIMEOUT": "3"}, extra_args=COMPACTION)
    c.start()
    try:
        c.wait_ready()
        leader = c.leader()
        follower = next(n for n in c.nodes if n != leader)
        c.signal(follower, signal.SIGKILL)
        # The others compact far past what the follower holds: it must get a snapshot.
        acked = {}
        others = [n for n in c.nodes if n != follower]
        for i in range(60):
            key = f"w{i}"
            assert http("PUT", f"{c.url(others[i % 2])}/v1/kv/{key}", {"value": i}).status == 200
            acked[key] = i
        c.env["RDBSYNC_FAILPOINTS"] = f"{step}=crash"
        c.start(follower)
        proc = c.nodes[follower].proc
        assert proc is not None
        assert proc.wait(60) == -signal.SIGKILL
        assert f"failpoint {step}: crash" in _log(c, follower)
        _restart_clean(c, [follower])  # it loads what the crash left, and catches up
        c.leader(timeout=30)
        wait_for(lambda: not _missing(c, follower, acked), 30, "the follower to catch up")
        assert http("GET", f"{c.url(follower)}/v1/kv/w59?consistency=serializable").body["value"] == 59
    finally:
        c.close()
