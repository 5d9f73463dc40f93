"""Compaction without rewriting the journal (issue 8.6): a header names the first live
record; a crash at any step of compaction loses no entry that was on disk.

A crash at a named step is its failpoint (``rdb._failpoints``) made to raise: nothing
after it runs, and the journal is reopened from the files (as in ``test_journal``,
dropping the object)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rdb import _journal
from rdb._errors import StorageCorrupt
from rdb._journal import _V1_MAGIC, HEADER_BYTES, DurableJournal
from tests.unit.test_journal import Entry, add_all, contents, crash, entries


class Crash(Exception):
    """The process stopped here."""


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "raft.journal")


@pytest.fixture
def open_journal(path: str) -> Iterator[Callable[[], DurableJournal]]:
    opened: list[DurableJournal] = []

    def _open() -> DurableJournal:
        j = DurableJournal(path)
        opened.append(j)
        return j

    yield _open
    for j in opened:
        if j._fd >= 0:
            try:
                os.close(j._fd)
            except OSError:
                pass


def _big(lo: int, hi: int) -> list[Entry]:
    return [(b"x" * 1000 + str(i).encode(), i, 1) for i in range(lo, hi + 1)]


def test_compaction_writes_only_the_header(
    path: str, monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    add_all(j, _big(1, 2000))
    j.sync()
    inode = os.stat(path).st_ino
    written: list[int] = []
    real_write, real_pwrite = os.write, os.pwrite

    def write(fd: int, data: Any) -> int:
        written.append(len(data))
        return real_write(fd, data)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        written.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "pwrite", pwrite)
    j.deleteEntriesTo(1500)  # keeps 500 entries (about 500 KB): none is copied
    assert sum(written) == HEADER_BYTES, written
    assert os.stat(path).st_ino == inode
    assert contents(j) == _big(1501, 2000)
    assert j.size_bytes == sum(_journal._RECORD.size + len(c) for c, _, _ in _big(1501, 2000))
    crash(j)
    assert contents(open_journal()) == _big(1501, 2000)


STEPS = ["journal.compact.before_header", "journal.compact.after_header", None]


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_of_compaction_loses_no_entry(
    step: str | None, monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    add_all(j, entries(1, 20))
    j.sync()
    add_all(j, entries(21, 25))  # pending when the compaction starts: synced by it

    def crash_point(name: str) -> None:
        if name == step:
            raise Crash(name)

    monkeypatch.setattr(_journal, "failpoint", crash_point)
    try:
        j.deleteEntriesTo(9)  # keep 10..25
    except Crash:
        pass
    crash(j)
    monkeypatch.undo()
    again = open_journal()
    expected = entries(1, 25) if step == "journal.compact.before_header" else entries(10, 25)
    assert contents(again) == expected
    add_all(again, entries(26, 27))  # and the journal goes on
    again.sync()
    again.deleteEntriesFrom(len(again) - 1)
    crash(again)
    assert contents(open_journal()) == expected + entries(26, 26)


@pytest.mark.parametrize(
    "step", ["journal.reclaim.during_rewrite", "journal.reclaim.before_rename", "journal.reclaim.after_rename", None]
)
def test_a_crash_while_the_dead_prefix_is_given_back_loses_no_entry(
    step: str | None, path: str, monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    monkeypatch.setattr(_journal, "RECLAIM_BYTES", 64 * 1024)
    j = open_journal()
    add_all(j, _big(1, 200))
    j.sync()

    def crash_point(name: str) -> None:
        if name == step:
            raise Crash(name)

    monkeypatch.setattr(_journal, "failpoint", crash_point)
    try:
        j.deleteEntriesTo(190)  # 190 KB dead, 10 KB live: the live part is copied
    except Crash:
        pass
    crash(j)
    monkeypatch.undo()
    again = open_journal()
    assert contents(again) == _big(191, 200)
    if step is None:
        assert os.path.getsize(path) < 20 * 1024  # the dead prefix is gone


def test_a_crash_in_clear_after_the_cut_reads_as_empty(
    path: str, monkeypatch: pytest.MonkeyPatch, open_journal: Callable[[], DurableJournal]
) -> None:
    j = open_journal()
    add_all(j, entries(1, 20))
    j.sync()
    j.deleteEntriesTo(10)

    def header_lost(self: DurableJournal, fd: int, start: int, first: int) -> None:
        raise Crash("before the header")

    monkeypatch.setattr(DurableJournal, "_write_header", header_lost)
    with pytest.raises(Crash):
        j.clear()
    crash(j)
    monkeypatch.undo()
    again = open_journal()
    assert contents(again) == []
    add_all(again, entries(30, 31))
    again.sync()
    crash(again)
    assert contents(open_journal()) == entries(30, 31)


def test_truncating_everything_after_a_compaction(open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 10))
    j.sync()
    j.deleteEntriesTo(4)
    j.deleteEntriesFrom(0)
    assert len(j) == 0
    add_all(j, entries(5, 6, term=2))
    j.sync()
    crash(j)
    assert contents(open_journal()) == entries(5, 6, term=2)


def test_a_header_naming_another_first_record_is_refused(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    j = open_journal()
    add_all(j, entries(1, 10))
    j.sync()
    j.deleteEntriesTo(4)
    crash(j)
    with open(path, "rb") as f:
        start = struct.unpack_from("<Q", f.read(HEADER_BYTES), 8)[0]
    with open(path, "r+b") as f:  # a header that says the first record is index 7
        f.write(_journal._header(start, 7))
    with pytest.raises(StorageCorrupt, match="header says 7"):
        DurableJournal(path)
    with open(path, "r+b") as f:
        f.seek(12)
        f.write(b"\xff")  # a damaged header
    with pytest.raises(StorageCorrupt, match="bad header"):
        DurableJournal(path)


def test_a_journal_of_the_old_format_is_converted(path: str, open_journal: Callable[[], DurableJournal]) -> None:
    body = bytearray(_V1_MAGIC)
    for c, i, t in entries(1, 5):
        body += _journal._RECORD.pack(len(c), zlib.crc32(struct.pack("<QQ", i, t) + c), i, t) + c
    with open(path, "wb") as f:
        f.write(bytes(body) + b"torn")
    j = open_journal()
    assert contents(j) == entries(1, 5)
    with open(path, "rb") as f:
        assert f.read(8) == _journal._V2_MAGIC
    j.deleteEntriesTo(2)
    crash(j)
    assert contents(open_journal()) == entries(3, 5)
