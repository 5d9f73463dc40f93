"""A durable Raft journal for PySyncObj, with group commit.

PySyncObj 0.3.17's ``FileJournal`` is an mmap that is never msync'ed, and its meta file
(term, vote) is renamed without fsync. This journal replaces it:

- entries are appended to an ordinary file as CRC-framed records; ``add`` only buffers,
  and ``sync`` writes the buffer and ``fdatasync``s it once for every entry added since
  the last call (group commit). ``rdb._raft`` calls ``sync`` before any message that
  could acknowledge an entry leaves the node, and before the leader counts itself
  toward a commit;
- a torn tail (crash mid-write) is detected by length, CRC and consecutive indexes on
  open and cut off, but only above the commit index recorded in the meta file: damage
  that would cut committed entries (and entries a snapshot does not cover) refuses to
  open (``StorageCorrupt``, naming the file and the offset);
- truncation is made durable at once (ftruncate + fsync). Compaction rewrites nothing:
  the 32-byte header names the offset of the first live record, and one ``pwrite`` of
  it plus ``fdatasync`` (within one sector: atomic) is the compaction's commit point.
  Until then the file holds every entry; after it, recovery starts at the new offset.
  The dead prefix is never read again; it is given back once it is large and the live
  records are few (a copy of those to a new file, renamed over the old one);
- term and vote are stored atomically and fsynced before ``setCurrentTerm`` returns, so
  no vote leaves the node before it is durable.

Fail-stop: PySyncObj's tick swallows exceptions and carries on, so every ``OSError`` in
a method PySyncObj calls is handed to ``on_fatal`` (default ``fail_stop``: log and exit
the process), never raised into PySyncObj. State in memory changes only after the disk
operation it stands for succeeded.

Threading: every method runs on PySyncObj's tick thread, except the read-only
counters, which any thread may read.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import msgpack

from rdb._errors import StorageCorrupt
from rdb._failpoints import failpoint

log = logging.getLogger("rdb.journal")

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


#: Exit status of a node that stopped because it could not persist (EX_IOERR).
FAIL_STOP_EXIT = 74
_F = TypeVar("_F", bound=Callable[..., Any])


def fail_stop(what: str, exc: BaseException) -> NoReturn:
    """Log why and end the process at once (no cleanup: what is on disk is what counts).

    For broken durability invariants (an fsync or a rewrite failed): carrying on could
    acknowledge what is not on disk. Safe from any thread."""
    log.critical(  # the text says it all too: this may run before any logging is set up
        "%s failed (%s); stopping this node, restart it once the disk is fixed",
        what,
        exc,
        extra={"event": "durability_fail_stop", "fields": {"operation": what, "error": str(exc)}},
    )
    logging.shutdown()
    os._exit(FAIL_STOP_EXIT)


def _fatal_on_oserror(what: str) -> Callable[[_F], _F]:
    """Route any ``OSError`` of a journal method to the journal's ``on_fatal``."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def run(self: DurableJournal, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except OSError as exc:
                self._on_fatal(f"journal {what} ({self._path})", exc)
                raise  # on_fatal returned (tests): never carry on silently

        return run  # type: ignore[return-value]

    return wrap


def fsync_directory(path: str) -> None:
    """fsync a directory, so renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: str, data: bytes, failpoints: str = "") -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync, rename, fsync of the dir.

    ``failpoints`` is a prefix: ``PREFIX.during_rewrite``, ``.before_rename`` and
    ``.after_rename`` are passed on the way (see ``rdb._failpoints``)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if failpoints:
            half = len(data) // 2
            _write_all(fd, data[:half])
            failpoint(failpoints + ".during_rewrite")
            _write_all(fd, data[half:])
        else:
            _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if failpoints:
        failpoint(failpoints + ".before_rename")
    os.replace(tmp, path)
    if failpoints:
        failpoint(failpoints + ".after_rename")
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
    """Implements PySyncObj's ``Journal`` interface on an fsynced append-only file.

    ``covered_index``: the last index of the snapshot that will be loaded with this
    journal (0 if none); entries up to it may be missing. Raises ``StorageCorrupt`` if
    the files cannot be used safely, ``OSError`` if they cannot be opened. After that,
    ``OSError`` goes to ``on_fatal(what, exc)`` (default ``fail_stop``)."""

    def __init__(
        self,
        path: str,
        *,
        covered_index: int = 0,
        on_fatal: Callable[[str, BaseException], None] = fail_stop,
    ) -> None:
        self._path = path
        self._dir = os.path.dirname(os.path.abspath(path))
        self._meta_path = path + ".meta"
        self._on_fatal = on_fatal
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []  # file offset of each entry's record
        self._pending = bytearray()
        self._start = HEADER_BYTES  # file offset of the first live record (the header's)
        self._end = HEADER_BYTES  # file offset after the last record (pending included)
        self.compactions = 0
        self.sync_count = 0  # fdatasync calls made for appends, for tests and metrics
        self.synced_entries = 0
        self.torn_bytes_dropped = 0
        self._meta: dict[str, Any] = self._load_meta()
        self._meta_dirty = False
        self._convert = False
        self._fd = self._open_and_recover(covered_index)
        if self._convert:  # a journal of the old format: once, atomically, to the header's
            self._rewrite(list(self._entries), "journal.convert")

    # ------------------------------------------------------------ recovery

    def _open_and_recover(self, covered_index: int) -> int:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            return self._recover(fd, covered_index)
        except BaseException:
            os.close(fd)
            raise

    def _recover(self, fd: int, covered_index: int) -> int:
        head = os.pread(fd, HEADER_BYTES, 0)
        v1 = head[: len(_V1_MAGIC)] == _V1_MAGIC
        if v1:
            start, first = len(_V1_MAGIC), 0  # converted below, once
        elif len(head) < HEADER_BYTES and head == _MAGIC[: len(head)]:
            # A new file, or a crash while creating one (nothing was ever written after).
            self._check_reaches_commit(covered_index, len(head), "empty")
            os.ftruncate(fd, 0)
            os.pwrite(fd, _MAGIC, 0)
            os.fsync(fd)
            fsync_directory(self._dir)
            return fd
        else:
            magic, start, first, crc = _HEADER.unpack(head.ljust(HEADER_BYTES, b"\xff"))
            if magic != _V2_MAGIC or zlib.crc32(struct.pack("<QQ", start, first)) != crc or start < HEADER_BYTES:
                raise StorageCorrupt(
                    f"{self._path} is not an rdbsync journal (bad header); {StorageCorrupt.REMEDY}", self._path
                )
        size = os.fstat(fd).st_size
        if start > size:
            # A header past the end: clear() cut the file, then the crash came. Empty.
            self._check_reaches_commit(covered_index, size, "empty")
            self._start = self._end = max(size, HEADER_BYTES)
            self._write_header(fd, self._start, 0)
            return fd
        with open(self._path, "rb") as f:
            f.seek(start)
            data = f.read()  # the live records only: the compacted prefix is never read
        pos, why = scan_records(data, self._entries, self._offsets, start)
        if first and self._entries and self._entries[0][1] != first:  # 0: none named
            raise StorageCorrupt(
                f"{self._path}: the first record at offset {start} has index {self._entries[0][1]}, "
                f"the header says {first}; {StorageCorrupt.REMEDY}",
                self._path,
            )
        end = start + pos
        if end != size:
            self._check_reaches_commit(covered_index, end, why)
            # A torn tail: the write never completed, so it was never acknowledged
            # as committed by this node's record of the commit index.
            self.torn_bytes_dropped = size - end
            os.ftruncate(fd, end)
            os.fsync(fd)
        else:
            self._check_reaches_commit(covered_index, end, "the end of the file")
        self._start, self._end = start, end
        self._convert = v1
        return fd

    def _check_reaches_commit(self, covered_index: int, offset: int, why: str) -> None:
        recorded = int(self._meta.get("commit_index", 0))
        reach = max(self.last_index, covered_index)
        if reach < recorded:
            raise StorageCorrupt(
                f"{self._path}: recovery stops at offset {offset} ({why}) after index {self.last_index}, "
                f"below the commit index {recorded} recorded in {self._meta_path}"
                + (f" (the snapshot covers up to {covered_index})" if covered_index else "")
                + f": committed entries are damaged or missing; {StorageCorrupt.REMEDY}",
                self._path,
            )

    def _load_meta(self) -> dict[str, Any]:
        try:
            with open(self._meta_path, "rb") as f:
                meta = msgpack.unpackb(f.read(), raw=False)
        except FileNotFoundError:
            return {}
        except (ValueError, msgpack.UnpackException) as exc:
            raise StorageCorrupt(
                f"{self._meta_path} is corrupt ({exc}); {StorageCorrupt.REMEDY}", self._meta_path
            ) from None
        if not isinstance(meta, dict):
            # Forgetting a vote is unsafe: refuse to start rather than guess.
            raise StorageCorrupt(f"{self._meta_path} is corrupt (not a map); {StorageCorrupt.REMEDY}", self._meta_path)
        return dict(meta)

    # ------------------------------------------------------ group commit

    @property
    def dirty(self) -> bool:
        """True while some added entry is not yet fsynced."""
        return bool(self._pending)

    @_fatal_on_oserror("sync")
    def sync(self) -> bool:
        """Write and fdatasync every buffered entry. Returns True if it synced anything."""
        if not self._pending:
            return False
        failpoint("journal.sync.before_write")
        _write_all_at(self._fd, self._pending, self._end - len(self._pending))
        failpoint("journal.sync.before_fsync")
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

    @_fatal_on_oserror("clear")
    def clear(self) -> None:
        # Cut first: a crash before the header is rewritten leaves it pointing past the
        # end, which recovery reads as empty, what clear() means.
        os.ftruncate(self._fd, HEADER_BYTES)
        if self._start != HEADER_BYTES:
            self._write_header(self._fd, HEADER_BYTES, 0)
        os.fsync(self._fd)
        self._entries.clear()
        self._offsets.clear()
        self._pending.clear()
        self._pending_count = 0
        self._start = self._end = HEADER_BYTES

    @_fatal_on_oserror("truncation")
    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 - PySyncObj's name
        if entryFrom >= len(self._entries):
            return
        self.sync()
        cut = self._offsets[entryFrom]
        # Disk first: if the cut fails the process stops with memory still matching
        # the file (a later sync would otherwise write at a stale offset).
        failpoint("journal.truncate.before")
        os.ftruncate(self._fd, cut)
        failpoint("journal.truncate.after")
        os.fsync(self._fd)
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._end = cut

    @_fatal_on_oserror("compaction")
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
        failpoint("journal.compact.before_header")
        self._write_header(self._fd, start, first)
        failpoint("journal.compact.after_header")
        del self._entries[:keep]
        del self._offsets[:keep]
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
            self._rewrite(list(self._entries), "journal.reclaim")

    @_fatal_on_oserror("reset")
    def reset(self, entries: Sequence[tuple[bytes, int, int]]) -> None:
        """Replace the whole journal with ``entries`` in one atomic, durable step (a
        snapshot load: no moment with an empty journal on disk)."""
        self._rewrite(list(entries), "journal.reset")

    def _rewrite(self, keep: list[tuple[bytes, int, int]], failpoints: str) -> None:
        self.sync()
        body = bytearray(_header(HEADER_BYTES, keep[0][1] if keep else 0))
        offsets = []
        for command, idx, term in keep:
            offsets.append(len(body))
            body += _frame(bytes(command), idx, term)
        write_file_atomically(self._path, bytes(body), failpoints)
        # Only now retire the old descriptor: on a failed rewrite it stays valid.
        old_fd, self._fd = self._fd, os.open(self._path, os.O_RDWR)
        os.close(old_fd)
        self._entries = list(keep)
        self._offsets = offsets
        self._pending.clear()
        self._pending_count = 0
        self._start, self._end = HEADER_BYTES, len(body)

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    @_fatal_on_oserror("close")
    def _destroy(self) -> None:
        self.sync()
        self._store_meta()
        os.close(self._fd)

    def close_quietly(self) -> None:
        """Close the file without syncing (a journal that will not be used)."""
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

    @_fatal_on_oserror("term and vote")
    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        voted = self._meta.get("voted_for")
        return voted if isinstance(voted, str) else None

    @_fatal_on_oserror("meta")
    def onOneSecondTimer(self) -> None:  # noqa: N802
        if self._meta_dirty:
            self._store_meta()

    def _store_meta(self) -> None:
        # The recorded commit index is what recovery must reach (else it refuses to
        # start), so never record one past what is on disk here: a term change can
        # store the meta while entries the commit index covers are still buffered.
        meta = dict(self._meta)
        commit = meta.get("commit_index")
        durable = self.durable_index
        self._meta_dirty = False
        if isinstance(commit, int) and commit > durable:
            meta["commit_index"] = durable
            self._meta_dirty = True  # store the full value once it is durable
        failpoint("journal.meta.before_write")
        write_file_atomically(self._meta_path, msgpack.packb(meta, use_bin_type=True))

    # ------------------------------------------------------------ status

    @property
    def size_bytes(self) -> int:
        """Bytes of live records (after the pending buffer is synced)."""
        return self._end - self._start

    @property
    def first_index(self) -> int:
        return self._entries[0][1] if self._entries else 0

    @property
    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    @property
    def durable_index(self) -> int:
        """Index of the last entry known to be on disk."""
        if not self._entries:
            return 0
        return self._entries[-1 - self._pending_count][1] if self._pending_count < len(self._entries) else 0


def scan_records(
    data: bytes, entries: list[tuple[bytes, int, int]], offsets: list[int], base: int = 0
) -> tuple[int, str]:
    """Parse the records in ``data`` (a journal file's bytes from offset ``base``, the
    first live record) into ``entries`` and ``offsets`` (file offsets); return where the
    valid prefix ends in ``data`` and why it ends there. A record must be whole, match
    its CRC, have the index after the previous one and a term no lower than the previous
    one. Pure."""
    pos = 0
    while True:
        if pos == len(data):
            return pos, "the end of the file"
        if pos + _RECORD.size > len(data):
            return pos, "a truncated record header"
        length, crc, idx, term = _RECORD.unpack_from(data, pos)
        body_end = pos + _RECORD.size + length
        if body_end > len(data):
            return pos, "a truncated record"
        command = bytes(data[pos + _RECORD.size : body_end])
        if zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
            return pos, "a record whose CRC does not match"
        if entries and (idx != entries[-1][1] + 1 or term < entries[-1][2]):
            return pos, f"index {idx} term {term} does not follow index {entries[-1][1]} term {entries[-1][2]}"
        entries.append((command, idx, term))
        offsets.append(base + pos)
        pos = body_end


def _write_all_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
