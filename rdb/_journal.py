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
- truncation and compaction are made durable at once (ftruncate + fsync, or a rewritten
  file: temporary file, fsync, rename, fsync of the directory);
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

_MAGIC = b"RDBJ\x00\x01\n\x00"
_RECORD = struct.Struct("<IIQQ")  # payload length, crc32, index, term


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
        self._end = len(_MAGIC)  # file offset after the last record (pending included)
        self.sync_count = 0  # fdatasync calls made for appends, for tests and metrics
        self.synced_entries = 0
        self.torn_bytes_dropped = 0
        self._meta: dict[str, Any] = self._load_meta()
        self._meta_dirty = False
        self._fd = self._open_and_recover(covered_index)

    # ------------------------------------------------------------ recovery

    def _open_and_recover(self, covered_index: int) -> int:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            return self._recover(fd, covered_index)
        except BaseException:
            os.close(fd)
            raise

    def _recover(self, fd: int, covered_index: int) -> int:
        size = os.fstat(fd).st_size
        if size < len(_MAGIC):
            self._check_reaches_commit(covered_index, len(_MAGIC), "empty")
            os.ftruncate(fd, 0)
            os.pwrite(fd, _MAGIC, 0)
            os.fsync(fd)
            fsync_directory(self._dir)
            return fd
        with open(self._path, "rb") as f:
            data = f.read()
        if data[: len(_MAGIC)] != _MAGIC:
            raise StorageCorrupt(
                f"{self._path} is not an rdbsync journal (bad header); {StorageCorrupt.REMEDY}", self._path
            )
        pos, why = scan_records(data, self._entries, self._offsets)
        if pos != len(data):
            self._check_reaches_commit(covered_index, pos, why)
            # A torn tail: the write never completed, so it was never acknowledged
            # as committed by this node's record of the commit index.
            self.torn_bytes_dropped = len(data) - pos
            os.ftruncate(fd, pos)
            os.fsync(fd)
        else:
            self._check_reaches_commit(covered_index, pos, "the end of the file")
        self._end = pos
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
        os.ftruncate(self._fd, len(_MAGIC))
        os.fsync(self._fd)
        self._entries.clear()
        self._offsets.clear()
        self._pending.clear()
        self._pending_count = 0
        self._end = len(_MAGIC)

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
        # Compaction after a snapshot: the dump was renamed into place in this directory
        # just before; make that rename durable before the entries it covers are dropped.
        fsync_directory(self._dir)
        failpoint("journal.compact.before_rewrite")
        self._rewrite(self._entries[entryTo:], "journal.compact")
        failpoint("journal.compact.after_rewrite")

    @_fatal_on_oserror("reset")
    def reset(self, entries: Sequence[tuple[bytes, int, int]]) -> None:
        """Replace the whole journal with ``entries`` in one atomic, durable step (a
        snapshot load: no moment with an empty journal on disk)."""
        self._rewrite(list(entries), "journal.reset")

    def _rewrite(self, keep: list[tuple[bytes, int, int]], failpoints: str) -> None:
        body = bytearray(_MAGIC)
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
        self._end = len(body)

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
        """Bytes of journal on disk (after the pending buffer is synced)."""
        return self._end

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


def scan_records(data: bytes, entries: list[tuple[bytes, int, int]], offsets: list[int]) -> tuple[int, str]:
    """Parse the records of a journal file's bytes (after the header) into ``entries``
    and ``offsets``; return where the valid prefix ends and why it ends there. A record
    must be whole, match its CRC, have the index after the previous one and a term no
    lower than the previous one. Pure."""
    pos = len(_MAGIC)
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
        offsets.append(pos)
        pos = body_end


def _write_all_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
