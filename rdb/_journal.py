"""A durable Raft journal for PySyncObj, with group commit.

PySyncObj 0.3.17's ``FileJournal`` is an mmap that is never msync'ed, and its meta file
(term, vote) is renamed without fsync. This journal replaces it:

- entries are appended to an ordinary file as CRC-framed records; ``add`` only buffers,
  and ``sync`` writes the buffer and ``fdatasync``s it once for every entry added since
  the last call (group commit). ``rdb._raft`` calls ``sync`` before any message that
  could acknowledge an entry leaves the node, and before the leader counts itself
  toward a commit;
- a torn tail (crash mid-write) is detected by length and CRC on open and cut off;
- truncation is made durable at once (ftruncate + fsync). Compaction rewrites nothing:
  the 32-byte header names the offset of the first live record, and one ``pwrite`` of
  it plus ``fdatasync`` (within one sector: atomic) is the compaction's commit point.
  Until then the file holds every entry; after it, recovery starts at the new offset.
  The dead prefix is never read again; it is given back once it is large and the live
  records are few (a copy of those to a new file, renamed over the old one);
- term and vote are stored atomically and fsynced before ``setCurrentTerm`` returns, so
  no vote leaves the node before it is durable.

Threading: every method runs on PySyncObj's tick thread, except the read-only
counters, which any thread may read.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import msgpack

_V1_MAGIC = b"RDBJ\x00\x01\n\x00"  # records right after it (files written before headers)
_V2_MAGIC = b"RDBJ\x00\x02\n\x00"
_HEADER = struct.Struct("<8sQQI4x")  # magic, start offset, first index, crc32 of the two
HEADER_BYTES = _HEADER.size
_RECORD = struct.Struct("<IIQQ")  # payload length, crc32, index, term
#: Compacted bytes before the live records are given back (see ``_reclaim``).
RECLAIM_BYTES = 64 * 1024 * 1024


def _header(start: int, first: int) -> bytes:
    return _HEADER.pack(_V2_MAGIC, start, first, zlib.crc32(struct.pack("<QQ", start, first)))


#: A fresh journal file: the header, records from right after it.
_MAGIC = _header(HEADER_BYTES, 0)


def fsync_directory(path: str) -> None:
    """fsync a directory, so renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync, rename, fsync of the dir."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _frame(command: bytes, idx: int, term: int) -> bytes:
    crc = zlib.crc32(struct.pack("<QQ", idx, term) + command)
    return _RECORD.pack(len(command), crc, idx, term) + command


class DurableJournal:
    """Implements PySyncObj's ``Journal`` interface on an fsynced append-only file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._dir = os.path.dirname(os.path.abspath(path))
        self._meta_path = path + ".meta"
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []  # file offset of each entry's record
        self._pending = bytearray()
        self._start = HEADER_BYTES  # file offset of the first live record (the header's)
        self._end = HEADER_BYTES  # file offset after the last record (pending included)
        self.compactions = 0
        self.sync_count = 0  # fdatasync calls made for appends, for tests and metrics
        self.synced_entries = 0
        self.torn_bytes_dropped = 0
        self._fd = self._open_and_recover()
        self._meta: dict[str, Any] = self._load_meta()
        self._meta_dirty = False

    # ------------------------------------------------------------ recovery

    def _open_and_recover(self) -> int:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        head = os.pread(fd, HEADER_BYTES, 0)
        v1 = head[: len(_V1_MAGIC)] == _V1_MAGIC
        if v1:
            start, first = len(_V1_MAGIC), None  # converted below, once
        elif len(head) < HEADER_BYTES and head == _MAGIC[: len(head)]:
            # A new file, or a crash while creating one (nothing was ever written after).
            os.ftruncate(fd, 0)
            os.pwrite(fd, _MAGIC, 0)
            os.fsync(fd)
            fsync_directory(self._dir)
            return fd
        else:
            magic, start, first, crc = _HEADER.unpack(head.ljust(HEADER_BYTES, b"\xff"))
            if magic != _V2_MAGIC or zlib.crc32(struct.pack("<QQ", start, first)) != crc or start < HEADER_BYTES:
                os.close(fd)
                raise RuntimeError(
                    f"{self._path} is not an rdbsync journal or its header is damaged; "
                    "remove this node's data directory and let it rejoin"
                )
        size = os.fstat(fd).st_size
        if start > size:
            # A header past the end: clear() cut the file, then the crash came. Empty.
            self._start = self._end = max(size, HEADER_BYTES)
            self._write_header(fd, self._start, 0)
            return fd
        with open(self._path, "rb") as f:
            f.seek(start)
            data = f.read()  # the live records only: the compacted prefix is never read
        pos = 0
        while pos + _RECORD.size <= len(data):
            length, crc, idx, term = _RECORD.unpack_from(data, pos)
            body_end = pos + _RECORD.size + length
            if body_end > len(data):
                break
            command = bytes(data[pos + _RECORD.size : body_end])
            if zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
                break
            self._entries.append((command, idx, term))
            self._offsets.append(start + pos)
            pos = body_end
        if first and self._entries and self._entries[0][1] != first:  # 0: none named
            os.close(fd)
            raise RuntimeError(
                f"{self._path}: the first record at offset {start} has index {self._entries[0][1]}, "
                f"the header says {first}; remove this node's data directory and let it rejoin"
            )
        end = start + pos
        if end < size:
            # A torn tail: the write never completed, so it was never acknowledged.
            self.torn_bytes_dropped = size - end
            os.ftruncate(fd, end)
            os.fsync(fd)
        self._start, self._end = start, end
        return self._copy_live(fd) if v1 else fd

    def _load_meta(self) -> dict[str, Any]:
        try:
            with open(self._meta_path, "rb") as f:
                meta = msgpack.unpackb(f.read(), raw=False)
            if not isinstance(meta, dict):
                # Forgetting a vote is unsafe: refuse to start rather than guess.
                raise RuntimeError(f"{self._meta_path} is corrupt (not a map); restore it or rebuild this node")
            return dict(meta)
        except FileNotFoundError:
            return {}

    # ------------------------------------------------------ group commit

    @property
    def dirty(self) -> bool:
        """True while some added entry is not yet fsynced."""
        return bool(self._pending)

    def sync(self) -> bool:
        """Write and fdatasync every buffered entry. Returns True if it synced anything."""
        if not self._pending:
            return False
        _write_all_at(self._fd, self._pending, self._end - len(self._pending))
        os.fdatasync(self._fd)
        self.synced_entries += self._pending_count
        self._pending.clear()
        self._pending_count = 0
        self.sync_count += 1
        return True

    _pending_count = 0

    # ---------------------------------------------------- Journal interface

    def add(self, command: bytes, idx: int, term: int) -> None:
        record = _frame(bytes(command), idx, term)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._pending += record
        self._pending_count += 1
        self._end += len(record)

    def clear(self) -> None:
        self._entries.clear()
        self._offsets.clear()
        self._pending.clear()
        self._pending_count = 0
        # Cut first: a crash before the header is rewritten leaves it pointing past the
        # end, which recovery reads as empty, what clear() means.
        os.ftruncate(self._fd, HEADER_BYTES)
        if self._start != HEADER_BYTES:
            self._write_header(self._fd, HEADER_BYTES, 0)
        os.fsync(self._fd)
        self._start = self._end = HEADER_BYTES

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 - PySyncObj's name
        if entryFrom >= len(self._entries):
            return
        self.sync()
        cut = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        os.ftruncate(self._fd, cut)
        os.fsync(self._fd)
        self._end = cut

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803 - PySyncObj's name
        """Drop the first ``entryTo`` entries (compaction): one header write, no copy.

        Order, each step durable before the next: the directory (the snapshot's rename
        just before), every pending entry, then the header naming the first kept record
        (the commit point), then memory. A crash before the header leaves every entry in
        the file, after it recovery starts at the kept ones; the dead prefix is given back
        afterwards (``_reclaim``), and nothing reads it again."""
        fsync_directory(self._dir)
        self.sync()
        keep = min(entryTo, len(self._entries))
        start = self._offsets[keep] if keep < len(self._entries) else self._end
        first = self._entries[keep][1] if keep < len(self._entries) else 0
        _crash_point("journal.compact.before_header")
        self._write_header(self._fd, start, first)
        _crash_point("journal.compact.after_header")
        del self._entries[:keep]
        del self._offsets[:keep]
        self._start = start
        self.compactions += 1
        self._reclaim()

    def _write_header(self, fd: int, start: int, first: int) -> None:
        os.pwrite(fd, _header(start, first), 0)
        os.fdatasync(fd)
        self._start = start

    def _reclaim(self) -> None:
        """Give the compacted prefix back, when that is cheap: once it is at least
        ``RECLAIM_BYTES`` and eight times the live records, those (only) are copied to a
        new file renamed over this one. Copying costs at most 1/8 of a byte per byte
        compacted; compaction itself copies nothing."""
        dead = self._start - HEADER_BYTES
        if dead >= RECLAIM_BYTES and (self._end - self._start) * 8 <= dead:
            _crash_point("journal.compact.before_reclaim")
            self._fd = self._copy_live(self._fd)

    def _copy_live(self, fd: int) -> int:
        """Write the live records to a new file (header, records) renamed over this one:
        one atomic step. Returns the new descriptor; the old one is closed."""
        self.sync()
        body = bytearray(_header(HEADER_BYTES, self._entries[0][1] if self._entries else 0))
        offsets = []
        for command, idx, term in self._entries:
            offsets.append(len(body))
            body += _frame(bytes(command), idx, term)
        write_file_atomically(self._path, bytes(body))
        # Only now retire the old descriptor: on a failed rewrite it stays valid.
        new_fd = os.open(self._path, os.O_RDWR)
        os.close(fd)
        self._offsets = offsets
        self._start = HEADER_BYTES
        self._end = len(body)
        return new_fd

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.sync()
        self._store_meta()
        os.close(self._fd)

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        # A commit index past the durable journal end (crash before a sync) is useless.
        return max(1, min(int(self._meta.get("commit_index", 1)), self.last_index))

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        voted = self._meta.get("voted_for")
        return voted if isinstance(voted, str) else None

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if self._meta_dirty:
            self._store_meta()

    def _store_meta(self) -> None:
        write_file_atomically(self._meta_path, msgpack.packb(self._meta, use_bin_type=True))
        self._meta_dirty = False

    # ------------------------------------------------------------ status

    @property
    def size_bytes(self) -> int:
        """Bytes of live records (after the pending buffer is synced)."""
        return self._end - self._start

    @property
    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    @property
    def durable_index(self) -> int:
        """Index of the last entry known to be on disk."""
        if not self._entries:
            return 0
        return self._entries[-1 - self._pending_count][1] if self._pending_count < len(self._entries) else 0


def _crash_point(name: str) -> None:
    """A named step of compaction; tests make it raise to stop there (a crash)."""


def _write_all_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
