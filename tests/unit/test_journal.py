"""Tests of ``rdb._journal.DurableJournal``: group commit, crash recovery, truncation,
compaction and durable term/vote.

A "crash" is simulated by dropping the journal object without ``sync``/``_destroy``
(closing only its file descriptor) and opening a new one on the same files.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from rdb import _failpoints as failpoints
from rdb._errors import StorageCorrupt
from rdb._journal import (
    _MAGIC,
    _RECORD,
    FAIL_STOP_EXIT,
    HEADER_BYTES,
    DurableJournal,
    fsync_directory,
    write_file_atomically,
)

Entry = tuple[bytes, int, int]


def cmd(i: int) -> bytes:
    return f"command-{i}".encode() * (1 + i % 3)


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [(cmd(i), i, term) for i in range(lo, hi + 1)]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "raft.journal")


@pytest.fixture
def opened() -> Iterator[list[DurableJournal]]:
    """Journals a test opened; their descriptors are closed at teardown."""
    journals: list[DurableJournal] = []
    yield journals
    for j in journals:
        try:
            os.close(j._fd)
        except OSError:
            pass


@pytest.fixture
def open_journal(path: str, opened: list[DurableJournal]) -> Callable[[], DurableJournal]:
    def _open() -> DurableJournal:
        j = DurableJournal(path)
        opened.append(j)
        return j

    return _open


def crash(j: DurableJournal) -> None:
    """Lose the process: nothing buffered is written, the meta is not stored."""
    os.close(j._fd)
    j._fd = -1


def contents(j: DurableJournal) -> list[Entry]:
    return [(bytes(e[0]), e[1], e[2]) for e in (j[i] for i in range(len(j)))]


def add_all(j: DurableJournal, items: list[Entry]) -> None:
    for c, i, t in items:
        j.add(c, i, t)


# =========================================================================== basics


def test_new_journal_is_empty_with_header(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    assert len(j) == 0
    assert j.last_index == 0
    assert j.durable_index == 0
    assert j.dirty is False
    assert j.getCurrentTerm() == 0
    assert j.getVotedForNodeId() is None
    assert j.getRaftCommitIndex() == 1
    with open(path, "rb") as f:
        assert f.read() == _MAGIC


def test_add_sync_reopen_same_entries(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    items = [*entries(1, 50), (b"", 51, 2), (bytes(range(256)) * 40, 52, 2)]
    add_all(j, items)
    assert contents(j) == items  # readable before the sync
    assert j[0] == items[0]
    assert j[-1][1] == 52
    assert [e[1] for e in j[1:3]] == [2, 3]
    assert j.sync() is True
    crash(j)
    again = open_journal()
    assert contents(again) == items
    assert again.last_index == 52
    assert again.durable_index == 52
    assert again.torn_bytes_dropped == 0


def test_add_after_reopen_appends(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 3))
    j.sync()
    crash(j)
    j = open_journal()
    add_all(j, entries(4, 6))
    j.sync()
    crash(j)
    assert contents(open_journal()) == entries(1, 6)


def test_unsynced_entries_are_not_on_disk(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 5))
    j.sync()
    size = os.path.getsize(path)
    add_all(j, entries(6, 9))
    assert j.dirty is True
    assert j.durable_index == 5
    assert j.last_index == 9
    assert os.path.getsize(path) == size  # add() only buffers
    crash(j)
    again = open_journal()
    assert contents(again) == entries(1, 5)
    assert again.torn_bytes_dropped == 0


def test_sync_with_nothing_pending_is_a_no_op(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    assert j.sync() is False
    j.add(b"x", 1, 1)
    assert j.sync() is True
    assert j.sync() is False
    assert j.sync_count == 1
    assert j.synced_entries == 1
    assert j.dirty is False


def test_flush_and_destroy_sync(path: str, opened: list[DurableJournal]) -> None:
    j = DurableJournal(path)
    j.add(b"a", 1, 1)
    j.flush()
    assert j.dirty is False
    j.add(b"b", 2, 1)
    j.setRaftCommitIndex(2)
    j._destroy()  # closes its own descriptor
    again = DurableJournal(path)
    opened.append(again)
    assert contents(again) == [(b"a", 1, 1), (b"b", 2, 1)]
    assert again.getRaftCommitIndex() == 2


def test_not_a_journal_is_refused(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"something else entirely")
    with pytest.raises(StorageCorrupt, match="not an rdbsync journal"):
        DurableJournal(path)


def test_file_shorter_than_header_is_reinitialised(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    with open(path, "wb") as f:
        f.write(_MAGIC[:3])  # crash while creating the file
    j = open_journal()
    assert len(j) == 0
    with open(path, "rb") as f:
        assert f.read() == _MAGIC


# =========================================================================== group commit


class Counter:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def wrap(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def wrapped(fd: int) -> None:
            self.calls.append(fd)
            real(fd)

        return wrapped


def test_group_commit_one_fdatasync_for_many_adds(
    monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    datasyncs, fsyncs, writes = Counter(), Counter(), []
    monkeypatch.setattr(os, "fdatasync", datasyncs.wrap(os.fdatasync))
    monkeypatch.setattr(os, "fsync", fsyncs.wrap(os.fsync))
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        writes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    add_all(j, entries(1, 100))
    assert datasyncs.calls == [] and fsyncs.calls == [] and writes == []  # add() does no I/O
    assert j.sync() is True
    assert datasyncs.calls == [j._fd]
    assert fsyncs.calls == []
    assert j.sync_count == 1
    assert j.synced_entries == 100
    assert j.durable_index == 100
    assert j.sync() is False
    assert len(datasyncs.calls) == 1
    add_all(j, entries(101, 110))
    j.sync()
    assert len(datasyncs.calls) == 2
    assert j.sync_count == 2
    assert j.synced_entries == 110


def test_durable_index_follows_sync(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 3))
    assert j.durable_index == 0
    j.sync()
    assert j.durable_index == 3
    add_all(j, entries(4, 4))
    assert j.durable_index == 3
    j.sync()
    assert j.durable_index == 4


# =========================================================================== torn tails


def test_torn_tail_garbage_is_cut(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 10))
    j.sync()
    crash(j)
    good = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 7)
    again = open_journal()
    assert contents(again) == entries(1, 10)
    assert again.torn_bytes_dropped == 28
    assert os.path.getsize(path) == good  # cut on disk too
    # New appends land right after the last good record.
    add_all(again, entries(11, 12))
    again.sync()
    crash(again)
    assert contents(open_journal()) == entries(1, 12)


def test_every_truncation_point_of_the_last_record_is_recovered(
    path: str, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    add_all(j, entries(1, 4))
    j.sync()
    end_of_three = j._offsets[3]
    crash(j)
    with open(path, "rb") as f:
        full = f.read()
    for cut in range(end_of_three, len(full)):
        with open(path, "wb") as f:
            f.write(full[:cut])
        again = open_journal()
        assert contents(again) == entries(1, 3), cut
        assert again.torn_bytes_dropped == cut - end_of_three
        crash(again)
        assert os.path.getsize(path) == end_of_three
    with open(path, "wb") as f:
        f.write(full)
    assert contents(open_journal()) == entries(1, 4)


def test_corrupted_record_cuts_it_and_everything_after(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 6))
    j.sync()
    offset = j._offsets[4]
    crash(j)
    with open(path, "r+b") as f:
        f.seek(offset + _RECORD.size + 2)  # a byte of entry 5's payload
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    again = open_journal()
    assert contents(again) == entries(1, 4)


def test_huge_length_field_is_a_torn_tail(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 2))
    j.sync()
    crash(j)
    with open(path, "ab") as f:
        f.write(_RECORD.pack(2**31, 0, 3, 1) + b"partial")
    again = open_journal()
    assert contents(again) == entries(1, 2)
    assert again.torn_bytes_dropped == _RECORD.size + 7


def test_header_record_fields(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    j.add(b"payload", 7, 3)
    j.sync()
    with open(path, "rb") as f:
        data = f.read()
    length, crc, idx, term = _RECORD.unpack_from(data, len(_MAGIC))
    assert (length, idx, term) == (7, 7, 3)
    assert crc == zlib.crc32(struct.pack("<QQ", 7, 3) + b"payload")
    assert data[len(_MAGIC) + _RECORD.size :] == b"payload"


# =========================================================================== deleteEntriesFrom


def test_delete_entries_from_survives_reopen(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 10))
    j.sync()
    j.deleteEntriesFrom(6)  # a position: keeps entries 1..6
    assert contents(j) == entries(1, 6)
    assert j.last_index == 6
    add_all(j, entries(7, 8, term=2))
    j.sync()
    crash(j)
    again = open_journal()
    assert contents(again) == entries(1, 6) + entries(7, 8, term=2)


def test_delete_entries_from_with_unsynced_tail(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 4))
    j.sync()
    add_all(j, entries(5, 8))  # buffered
    j.deleteEntriesFrom(6)  # cut inside the buffered part
    assert j.dirty is False
    assert contents(j) == entries(1, 6)
    crash(j)
    assert contents(open_journal()) == entries(1, 6)


def test_delete_entries_from_everything_and_past_the_end(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 3))
    j.sync()
    j.deleteEntriesFrom(10)  # past the end: nothing
    j.deleteEntriesFrom(3)
    assert len(j) == 3
    j.deleteEntriesFrom(0)
    assert len(j) == 0
    assert j.last_index == 0
    add_all(j, entries(1, 2, term=5))
    j.sync()
    crash(j)
    assert contents(open_journal()) == entries(1, 2, term=5)


def test_delete_entries_from_is_durable_at_once(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 5))
    j.sync()
    j.deleteEntriesFrom(2)
    crash(j)  # no sync after the truncation
    assert contents(open_journal()) == entries(1, 2)


def test_truncation_and_clear_are_fsynced_after_the_cut(
    path: str, monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    add_all(j, entries(1, 5))
    j.sync()
    log: list[tuple[str, int]] = []
    real_fsync, real_ftruncate = os.fsync, os.ftruncate

    def fsync(fd: int) -> None:
        log.append(("fsync", fd))
        real_fsync(fd)

    def ftruncate(fd: int, length: int) -> None:
        log.append(("ftruncate", length))
        real_ftruncate(fd, length)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    cut = j._offsets[3]
    j.deleteEntriesFrom(3)
    assert log == [("ftruncate", cut), ("fsync", j._fd)]
    log.clear()
    j.clear()
    assert log == [("ftruncate", len(_MAGIC)), ("fsync", j._fd)]


# =========================================================================== deleteEntriesTo (compaction)


def test_delete_entries_to_survives_reopen(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 10))
    j.sync()
    j.deleteEntriesTo(4)  # drops positions 0..3 (indexes 1..4)
    assert contents(j) == entries(5, 10)
    assert j[0][1] == 5
    add_all(j, entries(11, 12))
    j.sync()
    crash(j)
    again = open_journal()
    assert contents(again) == entries(5, 12)
    # and truncation still works on the compacted file
    again.deleteEntriesFrom(3)  # keeps 5, 6, 7
    crash(again)
    assert contents(open_journal()) == entries(5, 7)


def test_delete_entries_to_includes_unsynced_entries(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 5))
    j.sync()
    add_all(j, entries(6, 8))  # buffered
    j.deleteEntriesTo(2)
    assert j.dirty is False
    assert contents(j) == entries(3, 8)
    crash(j)
    assert contents(open_journal()) == entries(3, 8)


def test_compaction_writes_the_header_only_after_the_dir_and_the_entries_are_durable(
    path: str, monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    add_all(j, entries(1, 5))
    j.sync()
    add_all(j, entries(6, 7))  # pending: the new first record must be on disk first
    log: list[str] = []
    real_fsync, real_fdatasync, real_pwrite = os.fsync, os.fdatasync, os.pwrite

    def fsync(fd: int) -> None:
        log.append("fsync:" + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        log.append("fdatasync")
        real_fdatasync(fd)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        log.append(f"pwrite:{offset}:{len(data)}")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "pwrite", pwrite)
    j.deleteEntriesTo(3)
    directory = os.path.dirname(os.path.abspath(path))
    assert log[0] == f"fsync:{directory}"  # the snapshot rename that justified the compaction
    assert log[-3] == "fdatasync"  # the pending entries...
    assert log[-2:] == [f"pwrite:0:{HEADER_BYTES}", "fdatasync"]  # ...then the header: the commit point
    assert not os.path.exists(path + ".tmp")


def test_clear_survives_reopen(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 5))
    j.sync()
    add_all(j, entries(6, 7))
    j.clear()
    assert len(j) == 0
    assert j.dirty is False
    add_all(j, entries(100, 101, term=9))
    j.sync()
    crash(j)
    assert contents(open_journal()) == entries(100, 101, term=9)


# =========================================================================== term, vote, commit index


def test_set_current_term_is_durable_before_return(
    path: str, monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    meta = path + ".meta"
    directory = os.path.dirname(os.path.abspath(path))
    log: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        content = None
        if os.path.isfile(target):
            with open(target, "rb") as f:
                content = msgpack.unpackb(f.read(), raw=False)
        log.append(("fsync", target, content))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        log.append(("replace", src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    j.setCurrentTerm(7, "node-b:4321")
    # The new term and vote were fsynced in the temporary file, renamed, and the
    # rename itself was made durable, all before setCurrentTerm returned.
    assert log == [
        ("fsync", meta + ".tmp", {"term": 7, "voted_for": "node-b:4321"}),
        ("replace", meta + ".tmp", meta),
        ("fsync", directory, None),
    ]
    assert j.getCurrentTerm() == 7
    assert j.getVotedForNodeId() == "node-b:4321"
    crash(j)
    again = open_journal()
    assert again.getCurrentTerm() == 7
    assert again.getVotedForNodeId() == "node-b:4321"


def test_set_current_term_clears_vote(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    j.setCurrentTerm(3, "a:1")
    j.setCurrentTerm(4, None)
    crash(j)
    again = open_journal()
    assert again.getCurrentTerm() == 4
    assert again.getVotedForNodeId() is None


def test_commit_index_is_stored_on_timer_and_capped_by_the_log(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 10))
    j.sync()
    j.setRaftCommitIndex(8)
    assert j.getRaftCommitIndex() == 8
    crash(j)
    # not stored yet: the commit index is lazy (it is only a hint)
    j = open_journal()
    assert j.getRaftCommitIndex() == 1
    j.setRaftCommitIndex(8)
    j.onOneSecondTimer()
    crash(j)
    j = open_journal()
    assert j.getRaftCommitIndex() == 8
    # A stored commit index past the durable log end is capped to the log.
    j.deleteEntriesFrom(4)
    assert j.getRaftCommitIndex() == 4


# =========================================================================== helpers


def test_write_file_atomically(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    write_file_atomically(target, b"one")
    write_file_atomically(target, b"two")
    with open(target, "rb") as f:
        assert f.read() == b"two"
    assert os.listdir(tmp_path) == ["f"]
    fsync_directory(str(tmp_path))


# =========================================================================== damage below the commit index


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _committed_journal(open_journal: Callable[[], DurableJournal], last: int, commit: int) -> list[int]:
    """A journal of entries 1..last with ``commit`` recorded as the commit index, closed
    as a clean stop leaves it; returns the record offsets."""
    j = open_journal()
    add_all(j, entries(1, last))
    j.sync()
    j.setRaftCommitIndex(commit)
    j.onOneSecondTimer()
    offsets = list(j._offsets)
    crash(j)
    return offsets


def test_corruption_below_the_commit_index_refuses_to_open(
    path: str, open_journal: Callable[[], DurableJournal]
) -> None:
    offsets = _committed_journal(open_journal, 10, 10)
    _flip_byte(path, offsets[2] + _RECORD.size + 1)  # record 3 of 10
    size = os.path.getsize(path)
    with pytest.raises(StorageCorrupt) as err:
        open_journal()
    message = str(err.value)
    assert path in message and f"offset {offsets[2]}" in message and "CRC" in message
    assert "commit index 10" in message and "remove its data directory" in message
    assert err.value.path == path
    assert os.path.getsize(path) == size  # nothing was cut: the evidence stays


def test_torn_tail_above_the_commit_index_is_still_cut(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    offsets = _committed_journal(open_journal, 10, 7)
    _flip_byte(path, offsets[8] + _RECORD.size + 1)  # record 9: above the commit index
    again = open_journal()
    assert contents(again) == entries(1, 8)


def test_damage_covered_by_the_snapshot_is_cut(path: str, opened: list[DurableJournal]) -> None:
    j = DurableJournal(path)
    add_all(j, entries(1, 10))
    j.sync()
    j.setRaftCommitIndex(10)
    j.onOneSecondTimer()
    offsets = list(j._offsets)
    crash(j)
    _flip_byte(path, offsets[9] + _RECORD.size + 1)
    again = DurableJournal(path, covered_index=10)  # a snapshot holds up to 10
    opened.append(again)
    assert contents(again) == entries(1, 9)


def test_missing_journal_below_the_commit_index_refuses(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    _committed_journal(open_journal, 5, 5)
    os.unlink(path)
    with pytest.raises(StorageCorrupt, match="commit index 5"):
        open_journal()


def test_indexes_must_be_consecutive(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 3))
    j.add(cmd(5), 5, 1)  # a record that does not follow: index 4 is missing
    j.add(cmd(6), 6, 1)
    j.sync()
    crash(j)
    assert contents(open_journal()) == entries(1, 3)  # nothing committed: cut as a torn tail
    j = open_journal()
    add_all(j, entries(4, 4))
    j.add(cmd(5), 5, 2)
    j.add(cmd(6), 6, 1)  # a term going down
    j.sync()
    j.setRaftCommitIndex(6)
    j.onOneSecondTimer()
    crash(j)
    with pytest.raises(StorageCorrupt, match="index 6 term 1 does not follow index 5 term 2"):
        open_journal()


def test_recorded_commit_index_never_passes_what_is_on_disk(
    path: str, open_journal: Callable[[], DurableJournal]
) -> None:
    # A term change stores the meta at once, maybe while entries the commit index
    # covers are still buffered: the stored commit index must not cover them, or a
    # crash then would make the next start refuse a journal that is fine.
    j = open_journal()
    add_all(j, entries(1, 3))
    j.sync()
    add_all(j, entries(4, 6))  # buffered
    j.setRaftCommitIndex(6)
    j.setCurrentTerm(2, None)
    crash(j)
    again = open_journal()
    assert contents(again) == entries(1, 3)
    assert again._meta["commit_index"] == 3


# =========================================================================== every OSError is fatal


class Fatal(Exception):
    pass


@pytest.fixture
def fatal_journal(path: str, opened: list[DurableJournal]) -> Iterator[tuple[DurableJournal, list[str]]]:
    calls: list[str] = []

    def on_fatal(what: str, exc: BaseException) -> None:
        calls.append(what)
        raise Fatal(what) from exc

    j = DurableJournal(path, on_fatal=on_fatal)
    opened.append(j)
    add_all(j, entries(1, 6))
    j.sync()
    yield j, calls
    failpoints.arm(None)


def test_a_failed_truncation_stops_before_memory_changes(path: str, fatal_journal: Any) -> None:
    j, calls = fatal_journal
    size = os.path.getsize(path)
    failpoints.arm("journal.truncate.before=error")
    with pytest.raises(Fatal):
        j.deleteEntriesFrom(2)
    assert calls == [f"journal truncation ({path})"]
    # Memory still matches the file: a later sync would write at the right offset.
    assert contents(j) == entries(1, 6) and j._end == size == os.path.getsize(path)


def test_a_failed_fsync_after_truncation_is_fatal(fatal_journal: Any) -> None:
    j, calls = fatal_journal
    failpoints.arm("journal.truncate.after=error")
    with pytest.raises(Fatal):
        j.deleteEntriesFrom(2)
    assert len(calls) == 1 and len(j) == 6


@pytest.mark.parametrize(
    ("spec", "call"),
    [
        ("journal.sync.before_write=enospc", lambda j: (j.add(b"x", 7, 1), j.sync())),
        ("journal.sync.before_fsync=error", lambda j: (j.add(b"x", 7, 1), j.sync())),
        ("journal.compact.before_header=enospc", lambda j: j.deleteEntriesTo(3)),
        ("journal.compact.before_header=error", lambda j: j.deleteEntriesTo(3)),
        ("journal.reset.during_rewrite=enospc", lambda j: j.reset([(b"a", 9, 1), (b"b", 10, 1)])),
        ("journal.meta.before_write=enospc", lambda j: j.setCurrentTerm(5, None)),
        ("journal.meta.before_write=enospc", lambda j: (j.setRaftCommitIndex(4), j.onOneSecondTimer())),
    ],
)
def test_every_oserror_in_the_journal_is_fatal(path: str, fatal_journal: Any, spec: str, call: Any) -> None:
    j, calls = fatal_journal
    failpoints.arm(spec)
    with pytest.raises(Fatal):
        call(j)
    assert len(calls) == 1 and path in calls[0]
    failpoints.arm(None)
    crash(j)
    # What was durable before is still there.
    reopened = DurableJournal(path)
    assert contents(reopened)[:6] == entries(1, 6)
    os.close(reopened._fd)


def test_a_failed_compaction_keeps_the_old_journal(path: str, fatal_journal: Any) -> None:
    j, _ = fatal_journal
    failpoints.arm("journal.compact.before_header=enospc")
    with pytest.raises(Fatal):
        j.deleteEntriesTo(3)
    assert contents(j) == entries(1, 6)
    failpoints.arm(None)
    j.add(cmd(7), 7, 1)
    j.sync()  # the old descriptor is still the live file
    crash(j)
    again = DurableJournal(path)
    assert contents(again) == entries(1, 7)
    os.close(again._fd)


def test_fail_stop_exits_the_process(path: str) -> None:
    code = (
        "import sys; from rdb import _failpoints as f; from rdb._journal import DurableJournal\n"
        f"j = DurableJournal({path!r}); j.add(b'x', 1, 1); f.arm('journal.sync.before_fsync=enospc'); j.sync()\n"
        "print('still running')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == FAIL_STOP_EXIT, proc
    assert "still running" not in proc.stdout
    assert "journal sync" in proc.stderr and "No space left on device" in proc.stderr


def _compacted_journal(open_journal: Callable[[], DurableJournal], commit: int) -> dict[int, int]:
    """Entries 1..300, ``commit`` recorded, compacted to 201..300 (a snapshot covers
    1..200), closed as a crash leaves it; returns the live records' offsets by index."""
    j = open_journal()
    add_all(j, entries(1, 300))
    j.sync()
    j.setRaftCommitIndex(commit)
    j.deleteEntriesTo(200)
    j.onOneSecondTimer()
    offsets = dict(zip(range(201, 301), j._offsets, strict=True))
    crash(j)
    return offsets


def test_the_chaos_harness_damages_a_live_record_which_the_node_must_refuse(
    path: str, open_journal: Callable[[], DurableJournal]
) -> None:
    # Found by 20-minute chaos runs: the harness flipped a byte a third of the way into
    # the whole file, which after compactions (the header moves, the dead prefix stays)
    # lands among records the snapshot covers; then a third of the way into the live
    # records, which can be above the commit index the node recorded (a torn tail, cut by
    # design). Either way the node rightly started and the harness called that "started
    # on corrupt data". It must damage a live record at or below the recorded commit.
    from types import SimpleNamespace

    from chaos._faults import _corrupt

    offsets = _compacted_journal(open_journal, commit=220)  # 221..300 may be cut as a torn tail
    damage = _corrupt(SimpleNamespace(data_dir=os.path.dirname(path)), 1)
    assert damage["file"] == "raft.journal"
    flipped = int(damage["damage"].split()[1])
    assert offsets[201] < flipped < offsets[221]
    with pytest.raises(StorageCorrupt):
        DurableJournal(path, covered_index=200)


def test_the_chaos_harness_injects_nothing_when_no_live_record_is_committed(
    path: str, open_journal: Callable[[], DurableJournal]
) -> None:
    from types import SimpleNamespace

    from chaos._faults import _corrupt

    _compacted_journal(open_journal, commit=200)
    before = Path(path).read_bytes()
    assert _corrupt(SimpleNamespace(data_dir=os.path.dirname(path)), 1)["file"] is None
    assert Path(path).read_bytes() == before
