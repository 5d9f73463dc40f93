"""A durable Raft journal for PySyncObj, with group commit.

PySyncObj 0.3.17's ``FileJournal`` is an mmap that is never msync'ed, and its meta file
(term, vote) is renamed without fsync. This journal replaces it:

- entries are appended to an ordinary file as CRC-framed records; ``add`` only buffers,
  and ``sync`` writes the buffer and ``fdatasync``s it once for every entry added since
  the last call (group commit). ``rdb._raft`` calls ``sync`` before any message that
  could acknowledge an entry leaves the node, and before the leader counts itself
  toward a commit;
- a torn tail (crash mid-write) is detected by length and CRC on open and cut off;
- truncation and compaction are made durable at once (ftruncate + fsync, or a rewritten
  file: temporary file, fsync, rename, fsync of the directory);
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

_MAGIC = b"RDBJ\x00\x01\n\x00"
_RECORD = struct.Struct("<IIQQ")  # payload length, crc32, index, term


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
        self._end = len(_MAGIC)  # file offset after the last record (pending included)
        self.sync_count = 0  # fdatasync calls made for appends, for tests and metrics
        self.synced_entries = 0
        self.torn_bytes_dropped = 0
        self._fd = self._open_and_recover()
        self._meta: dict[str, Any] = self._load_meta()
        self._meta_dirty = False

    # ------------------------------------------------------------ recovery

    def _open_and_recover(self) -> int:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        if size < len(_MAGIC):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _MAGIC, 0)
            os.fsync(fd)
            fsync_directory(self._dir)
            return fd
        with open(self._path, "rb") as f:
            data = f.read()
        if data[: len(_MAGIC)] != _MAGIC:
            os.close(fd)
            raise RuntimeError(f"{self._path} is not an rdbsync journal")
        pos = len(_MAGIC)
        while pos + _RECORD.size <= len(data):
            length, crc, idx, term = _RECORD.unpack_from(data, pos)
            body_end = pos + _RECORD.size + length
            if body_end > len(data):
                break
            command = bytes(data[pos + _RECORD.size : body_end])
            if zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
                break
            self._entries.append((command, idx, term))
            self._offsets.append(pos)
            pos = body_end
        if pos != len(data):
            # A torn tail: the write never completed, so it was never acknowledged.
            self.torn_bytes_dropped = len(data) - pos
            os.ftruncate(fd, pos)
            os.fsync(fd)
        self._end = pos
        return fd

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
        os.ftruncate(self._fd, len(_MAGIC))
        os.fsync(self._fd)
        self._end = len(_MAGIC)

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
        # Compaction after a snapshot: the dump was renamed into place in this directory
        # just before; make that rename durable before the entries it covers are dropped.
        fsync_directory(self._dir)
        keep = self._entries[entryTo:]
        body = bytearray(_MAGIC)
        offsets = []
        for command, idx, term in keep:
            offsets.append(len(body))
            body += _frame(bytes(command), idx, term)
        write_file_atomically(self._path, bytes(body))
        # Only now retire the old descriptor: on a failed rewrite it stays valid.
        old_fd, self._fd = self._fd, os.open(self._path, os.O_RDWR)
        os.close(old_fd)
        self._entries = list(keep)
        self._offsets = offsets
        self._pending.clear()
        self._pending_count = 0
        self._end = len(body)

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
        """Bytes of journal on disk (after the pending buffer is synced)."""
        return self._end

    @property
    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    @property
    def durable_index(self) -> int:
        """Index of the last entry known to be on disk."""
        if not self._entries:
            return 0
        return self._entries[-1 - self._pending_count][1] if self._pending_count < len(self._entries) else 0


def _write_all_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
