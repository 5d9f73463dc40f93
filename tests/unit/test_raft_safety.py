"""Unit tests of the safety seams in ``rdb._raft`` that need no cluster: the snapshot
loader's decision, the durable snapshot install, and the Raft frame-size cap."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from rdb import _failpoints as failpoints
from rdb._errors import StorageCorrupt
from rdb._journal import DurableJournal
from rdb._raft import (
    MAX_FRAME_BYTES,
    _create_serializer,
    _SnapshotPath,
    dump_snapshot,
    journal_holds,
    load_snapshot,
    open_data_files,
)
from rdb._wire import stored_zlib

# =========================================================================== the loader's decision


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[DurableJournal]:
    j = DurableJournal(str(tmp_path / "raft.journal"))
    for i in range(5, 21):
        j.add(b"c%d" % i, i, 2 if i < 15 else 3)
    j.sync()
    yield j
    j.close_quietly()


def test_journal_holds_the_snapshot_entry_only_with_its_term(journal: DurableJournal) -> None:
    assert journal_holds(journal, 10, 2)  # keep: entries 11..20 stay
    assert journal_holds(journal, 20, 3)
    assert not journal_holds(journal, 10, 3)  # another term there: the journal diverged
    assert not journal_holds(journal, 4, 2)  # compacted away
    assert not journal_holds(journal, 21, 3)  # the journal is behind the snapshot


def _snapshot(path: str, last: int, term: int = 2) -> None:
    dump_snapshot(path, b"state", [b"l", last, term], [b"p", last - 1, term], ["a:1"])


def test_open_data_files_refuses_a_journal_that_starts_past_the_snapshot(tmp_path: Path) -> None:
    journal_path = str(tmp_path / "raft.journal")
    j = DurableJournal(journal_path)
    for i in range(5, 9):
        j.add(b"c", i, 1)
    j.sync()
    j.close_quietly()
    with pytest.raises(StorageCorrupt, match="no snapshot"):
        open_data_files(str(tmp_path / "raft.snapshot"), journal_path)
    _snapshot(str(tmp_path / "raft.snapshot"), 3)
    with pytest.raises(StorageCorrupt, match=r"after the snapshot .* ends"):
        open_data_files(str(tmp_path / "raft.snapshot"), journal_path)
    _snapshot(str(tmp_path / "raft.snapshot"), 6)
    snapshot, opened = open_data_files(str(tmp_path / "raft.snapshot"), journal_path)
    assert snapshot is not None and snapshot[1][1] == 6 and len(opened) == 4
    opened.close_quietly()


@pytest.mark.parametrize("cut", [0, 3, 8, 15, -1])
def test_a_damaged_snapshot_refuses_to_start(tmp_path: Path, cut: int) -> None:
    dump = str(tmp_path / "raft.snapshot")
    _snapshot(dump, 6)
    with open(dump, "rb") as f:
        data = f.read()
    with open(dump, "wb") as f:
        f.write(data[:cut] if cut >= 0 else data + b"x")
    with pytest.raises(StorageCorrupt) as err:
        open_data_files(dump, str(tmp_path / "raft.journal"))
    assert dump in str(err.value) and "remove its data directory" in str(err.value)


# =========================================================================== snapshot install


def test_an_installed_snapshot_is_durable_before_it_replaces_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = str(tmp_path / "raft.snapshot")
    _snapshot(dump, 3)
    incoming = str(tmp_path / "incoming")
    _snapshot(incoming, 40)
    with open(incoming, "rb") as f:
        data = f.read()
    serializer = _create_serializer(_SnapshotPath(dump), 2**16, False, lambda *a: None, lambda p: None, None)
    log: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        log.append("fsync:" + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        log.append(f"replace:{os.path.basename(src)}->{os.path.basename(dst)}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert serializer.setTransmissionData((data[:20], True, False)) is False
    assert serializer.setTransmissionData((data[20:], False, False)) is False
    assert serializer.setTransmissionData((b"", False, True)) is True
    # PySyncObj renamed the received file over ours with no fsync at all.
    assert log == [
        "fsync:raft.snapshot.1.tmp",
        "replace:raft.snapshot.1.tmp->raft.snapshot",
        f"fsync:{tmp_path.name}",
    ]
    assert load_snapshot(dump)[1][1] == 40
    assert os.stat(dump).st_mode & 0o777 == 0o600


def test_a_truncated_received_snapshot_does_not_replace_ours(tmp_path: Path) -> None:
    dump = str(tmp_path / "raft.snapshot")
    _snapshot(dump, 3)
    incoming = str(tmp_path / "incoming")
    _snapshot(incoming, 40)
    with open(incoming, "rb") as f:
        data = f.read()
    serializer = _create_serializer(_SnapshotPath(dump), 2**16, False, lambda *a: None, lambda p: None, None)
    assert serializer.setTransmissionData((data[:-5], True, True)) is False
    assert load_snapshot(dump)[1][1] == 3
    assert not os.path.exists(dump + ".1.tmp")


def test_an_install_that_cannot_be_written_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dump = str(tmp_path / "raft.snapshot")
    stops: list[str] = []

    def fail_stop(what: str, exc: BaseException) -> None:
        stops.append(what)
        raise SystemExit(74)

    monkeypatch.setattr("rdb._raft.fail_stop", fail_stop)
    serializer = _create_serializer(_SnapshotPath(dump), 2**16, False, lambda *a: None, lambda p: None, None)
    failpoints.arm("snapshot.install.before_rename=enospc")
    try:
        _snapshot(str(tmp_path / "in"), 5)
        with open(tmp_path / "in", "rb") as f:
            data = f.read()
        with pytest.raises(SystemExit):
            serializer.setTransmissionData((data, True, True))
    finally:
        failpoints.arm(None)
    assert stops and dump in stops[0]
    assert not os.path.exists(dump)


# =========================================================================== frame-size cap


@pytest.fixture
def connection() -> Iterator[tuple[Any, socket.socket, Any, list[Any]]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    poller = createPoller("auto")
    received: list[Any] = []
    conn = TcpConnection(poller, onMessageReceived=received.append, socket=ours, timeout=30)
    yield conn, peer, poller, received
    conn.disconnect()
    peer.close()


def _pump(poller: Any, conn: Any, until: Any, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        poller.poll(0.05)


def _frame(message: Any) -> bytes:
    data = stored_zlib(pysyncobj_pickle.dumps(message))
    return struct.pack("i", len(data)) + data


@pytest.mark.parametrize("announced", [2**31 - 1, MAX_FRAME_BYTES + 1, -5])
def test_an_oversized_frame_announcement_drops_the_connection(connection: Any, announced: int) -> None:
    conn, peer, poller, received = connection
    peer.sendall(struct.pack("i", announced) + b"x" * 1000)
    _pump(poller, conn, lambda: conn.state == CONNECTION_STATE.DISCONNECTED)
    # PySyncObj kept the connection and buffered up to 2 GiB, copying it on every recv.
    assert conn.state == CONNECTION_STATE.DISCONNECTED
    assert received == []


def test_frames_within_the_cap_still_arrive_in_pieces(connection: Any) -> None:
    conn, peer, poller, received = connection
    big = {"type": "x", "blob": b"y" * 3_000_000}
    stream = _frame({"type": "a"}) + _frame(big) + _frame({"type": "b"})
    for i in range(0, len(stream), 65536):
        peer.sendall(stream[i : i + 65536])
        poller.poll(0.01)
    _pump(poller, conn, lambda: len(received) == 3)
    assert [m["type"] for m in received] == ["a", "x", "b"]
    assert received[1] == big
    assert conn.state == CONNECTION_STATE.CONNECTED


# =========================================================================== failpoints


def test_every_failpoint_is_listed_in_the_readme() -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    assert [name for name in failpoints.FAILPOINTS if f"| `{name}` |" not in text] == []


def test_failpoint_specs() -> None:
    assert failpoints.parse("journal.sync.before_write=crash@3+, snapshot.before_rename=enospc") == {
        "journal.sync.before_write": ("crash", 3, True),
        "snapshot.before_rename": ("enospc", 1, False),
    }
    for bad in ("nope=crash", "journal.sync.before_write=explode", "journal.sync.before_write=crash@0", "x"):
        with pytest.raises(ValueError, match="RDBSYNC_FAILPOINTS"):
            failpoints.parse(bad)


def test_a_failpoint_fires_at_the_asked_hits_only() -> None:
    failpoints.arm("journal.sync.before_write=error@2+")
    try:
        failpoints.failpoint("journal.sync.before_write")  # first hit: nothing
        failpoints.failpoint("journal.truncate.before")  # not armed
        for _ in range(2):
            with pytest.raises(OSError):
                failpoints.failpoint("journal.sync.before_write")
    finally:
        failpoints.arm(None)
    failpoints.failpoint("journal.sync.before_write")
