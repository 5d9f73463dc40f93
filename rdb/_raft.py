"""The only module that touches PySyncObj.

``RaftNode`` is a ``SyncObj`` subclass that fixes what 0.3.17 gets wrong
(see shared/PYSYNCOBJ.md):

- durability: a ``DurableJournal`` replaces the mmap journal. While it holds unsynced
  entries, outgoing Raft messages are held back; once per tick (and before the leader
  counts itself toward a commit) the journal is fsynced and the held messages are
  released. A follower therefore never acknowledges an entry that is not on its disk,
  and one fsync covers every entry that arrived in the same poll batch (group commit).
  The leader's AppendEntries are not held: its fsync overlaps its followers';
- truncation: AppendEntries are rewritten by ``plan_append`` so a follower truncates only
  on a real conflict, and the leader never moves ``nextIndex`` backwards on a success
  reply (which caused the re-send storms);
- snapshots: written by our serializer (temporary file, fsync; the rename is followed by
  a directory fsync before the journal drops the entries), never forked. A snapshot
  received from the leader is fsynced and checked before it replaces ours. On load, the
  journal's entries beyond the snapshot are kept when the journal holds the snapshot's
  last entry (PySyncObj cleared them: a crash between the snapshot rename and the
  journal rewrite lost every acknowledged entry after the snapshot);
- fail-stop: a snapshot that does not load, a journal that does not reach the recorded
  commit index, or one compacted past a missing snapshot refuses to start
  (``StorageCorrupt``); any ``OSError`` while persisting ends the process
  (``fail_stop``), because PySyncObj's tick swallows exceptions and carries on;
- acknowledgements carry the follower's term; the leader ignores those of another term;
- commit latency: a leader sends its new commit index before it applies the entries,
  and a follower applies what is committed before its fsync of the entries that came
  with it (committed entries are on a majority's disks already);
- frames announced over ``MAX_FRAME_BYTES`` drop the connection before anything is
  buffered, and a frame is read into a ``bytearray`` (PySyncObj's ``bytes +=`` copied
  the whole buffer for every recv);
- one replicated entry point, ``_rdb_apply(payload)``, carrying our msgpack command;
- the wire: messages are framed as zlib *stored* blocks, not compressed (``rdb._wire``).

Threading: everything here runs on PySyncObj's tick thread, except ``propose``,
``status`` and the membership calls, which are safe from any thread (they only enqueue
or read plain attributes).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import gc
import logging
import os
import queue
import random
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pysyncobj.pickle as _pysyncobj_pickle
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj import syncobj as _pysyncobj_module
from pysyncobj import tcp_connection as _pysyncobj_tcp
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.node import TCPNode
from pysyncobj.serializer import Serializer
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from rdb._append import coalesce_outgoing, plan_append
from rdb._election import PreVoteAsk, PreVoteRound, would_vote
from rdb._errors import StorageCorrupt
from rdb._failpoints import failpoint
from rdb._journal import DurableJournal, fail_stop, fsync_directory
from rdb._raft_membership import MembershipRules, disable_utility_membership
from rdb._read_index import AppliedWaiters, LeaderReads
from rdb._wire import StoredZlib

log = logging.getLogger("rdb.raft")

_FOLLOWER, _CANDIDATE, _LEADER = 0, 1, 2
ROLE_NAMES = {_FOLLOWER: "follower", _CANDIDATE: "candidate", _LEADER: "leader"}

#: Outcomes that mean "not applied, and never will be".
NOT_APPLIED_REASONS = frozenset(
    {
        FAIL_REASON.QUEUE_FULL,
        FAIL_REASON.MISSING_LEADER,
        FAIL_REASON.DISCARDED,
        FAIL_REASON.NOT_LEADER,
        FAIL_REASON.REQUEST_DENIED,
    }
)
REASON_NAMES = {
    FAIL_REASON.SUCCESS: "success",
    FAIL_REASON.QUEUE_FULL: "queue_full",
    FAIL_REASON.MISSING_LEADER: "missing_leader",
    FAIL_REASON.DISCARDED: "discarded",
    FAIL_REASON.NOT_LEADER: "not_leader",
    FAIL_REASON.LEADER_CHANGED: "leader_changed",
    FAIL_REASON.REQUEST_DENIED: "request_denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "unknown_outcome",
}

_SNAPSHOT_MAGIC = b"RDBSNAP1"
COMPACT_AT_BYTES = 64 * 1024 * 1024
#: A committed restore leaves the whole key space in the journal a second time (on disk
#: and in memory): a node compacts it away this many seconds after, times its rank, so
#: that the nodes of one cluster do not all snapshot at once.
RESTORE_COMPACT_STAGGER = 2.0
CONNECTION_RETRY_SECONDS = 0.2
SWITCH_INTERVAL = 0.001

#: The message carrying several forwarded commands, or their answers, at once. Every
#: member must speak it: a node of an older version would drop it (its writes forwarded
#: through a newer follower would time out).
BATCH = "rdb_forward_batch"
#: ReadIndex (``rdb._read_index``): a node asks the leader for a read index, and the
#: leader answers once a round of AppendEntries sent after the question confirmed it.
READ_INDEX = "rdb_read_index"
READ_INDEX_REPLY = "rdb_read_index_reply"
_FORWARDS = frozenset({"apply_command", "apply_command_response", READ_INDEX, READ_INDEX_REPLY})
#: Pre-vote (``rdb._election``): a node asks before it stands for election.
PRE_VOTE = "rdb_pre_vote"
PRE_VOTE_REPLY = "rdb_pre_vote_reply"
#: A follower whose link to its leader closed (the leader's process died: its kernel
#: closed the socket) stands after a pause drawn from this share of the election timeout
#: range (min / 12 to max / 4: 0.05-0.3 s with the default 0.6-1.2 s), not a whole
#: election timeout; pre-vote keeps a follower that merely lost its own link from
#: deposing a leader the others still hear. A share, not fixed seconds, so that the
#: operator's election timeouts still set who stands first and how patient a node is.
LEADER_LOST_PAUSE = (1 / 12, 1 / 4)
#: Election timeouts while the leader is known lost (its link closed, nothing heard
#: since), as the same kind of share (0.15-0.4 s by default): a split vote or a pre-vote
#: asked too early is retried this soon.
LEADER_LOST_TIMEOUT = (1 / 4, 1 / 3)
#: What a leader sends without waiting for its own fsync: entries may reach followers
#: before they are on the leader's disk (the leader counts itself toward a commit only
#: after its fsync, at the start of the next tick), and answers about indexes promise
#: nothing durable.
_LEADER_SENDS_AT_ONCE = frozenset({"append_entries", "apply_command_response", READ_INDEX_REPLY, BATCH})
#: ``callback(index, reason)`` of ``RaftNode.read_index``.
ReadCallback = Callable[[int | None, int], None]


# Every Raft message went through a fresh zlib deflate stream (~50 us each, on the
# leader's single tick thread); send stored blocks instead (see rdb._wire).
_pysyncobj_tcp.zlib = StoredZlib


class _JournalPath(str):
    """A journal path carrying the ``DurableJournal`` already opened on it (see
    ``_create_journal``)."""

    journal: DurableJournal | None = None


_original_create_journal = _pysyncobj_module.createJournal


def _create_journal(journal_file: Any = None) -> Any:
    # SyncObj.__init__ calls the module-level createJournal; this is the narrowest seam to
    # give it our journal without copying its constructor. Plain paths keep the old one.
    if isinstance(journal_file, _JournalPath):
        return journal_file.journal if journal_file.journal is not None else DurableJournal(str(journal_file))
    return _original_create_journal(journal_file)


_pysyncobj_module.createJournal = _create_journal


class _SnapshotPath(str):
    """Marks a snapshot path that must get a ``_DurableSerializer``."""


class _DurableSerializer(Serializer):  # type: ignore[misc]
    """PySyncObj's ``Serializer`` for our file case (custom serializer, no fork), made
    durable and fail-stop:

    - compaction: temporary file (fsynced by the serializer callback), rename, fsync of
      the directory; an ``OSError`` ends the process (the journal is still whole);
    - install: the received file is fsynced and checked (header and length) *before*
      it replaces ours, and the rename is made durable before the journal is reset.
      PySyncObj renamed it unsynced and unchecked.

    Runs on the tick thread. Passes the ``snapshot.*`` failpoints."""

    _incoming: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sending: dict[Any, Any] = {}  # node -> the snapshot file being sent to it

    def serialize(self, data: Any, id: Any) -> None:
        if getattr(self, "_Serializer__pid") != 0:  # noqa: B009 - the base class's private name
            return
        self._Serializer__currentID = id
        path = self._Serializer__fileName
        tmp = path + ".tmp"
        try:
            self._Serializer__serializer(tmp, data[1:])
        except OSError as exc:
            fail_stop(f"writing the snapshot {tmp}", exc)
        except Exception:
            log.exception("encoding the snapshot failed; the journal is kept whole")
            self._Serializer__pid = -2
            return
        try:
            failpoint("snapshot.before_rename")
            os.replace(tmp, path)
            failpoint("snapshot.after_rename")
            fsync_directory(os.path.dirname(os.path.abspath(path)))
        except OSError as exc:
            fail_stop(f"renaming the snapshot {tmp} into place", exc)
        self._Serializer__pid = -1  # PySyncObj's "done, in memory" state: SUCCESS next tick

    def close_files(self) -> None:
        """Close the snapshot files still being sent or received (the node is stopping;
        tick thread). PySyncObj drops its open send files without closing them."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.close()
        self._end_sends()

    def _end_send(self, node: Any) -> None:
        self._Serializer__transmissions.pop(node, None)
        sending = self._sending.pop(node, None)
        if sending is not None:
            sending.close()

    def _end_sends(self) -> None:
        for node in list(self._sending):
            self._end_send(node)
        self._Serializer__transmissions.clear()

    def getTransmissionData(self, transmissionID: Any) -> Any:  # noqa: N802,N803 - PySyncObj's names
        # PySyncObj forgets the file it sends from when the send ends, unclosed.
        data = super().getTransmissionData(transmissionID)
        sending = self._Serializer__transmissions.get(transmissionID)
        if sending is not None and sending.get("file") is not None:
            self._sending[transmissionID] = sending["file"]
        else:
            self._end_send(transmissionID)
        return data

    def cancelTransmisstion(self, id: Any) -> None:  # noqa: N802 - PySyncObj's names (sic)
        self._end_send(id)

    def setTransmissionData(self, data: Any) -> bool:  # noqa: N802 - PySyncObj's name
        if data is None:
            return False
        chunk, is_first, is_last = data
        path = self._Serializer__fileName
        tmp = path + ".1.tmp"
        try:
            if is_first:
                if self._incoming is not None:
                    self._incoming.close()
                self._incoming = open(tmp, "wb")
            elif self._incoming is None:
                return False
            self._incoming.write(chunk)
            if not is_last:
                return False
            incoming, self._incoming = self._incoming, None
            failpoint("snapshot.install.before_fsync")
            incoming.flush()
            os.fsync(incoming.fileno())
            incoming.close()
            os.chmod(tmp, 0o600)
            problem = check_snapshot_file(tmp)
            if problem is not None:
                log.error(
                    "discarding the snapshot received from the leader",
                    extra={"event": "snapshot_discarded", "fields": {"problem": problem}},
                )
                os.unlink(tmp)
                return False
            failpoint("snapshot.install.before_rename")
            os.replace(tmp, path)
            failpoint("snapshot.install.after_rename")
            fsync_directory(os.path.dirname(os.path.abspath(path)))
            failpoint("snapshot.install.after_fsync")
        except OSError as exc:
            fail_stop(f"installing the snapshot received from the leader into {path}", exc)
        return True


class _SnapshotWriter:
    """``conf.serializer`` of a ``RaftNode``: marks it for ``_BackgroundSerializer``.

    ``prepare(raft_data)`` runs on the tick thread, at the applied index PySyncObj
    snapshots, and returns the function that writes the file from a frozen copy (any
    thread)."""

    def __init__(self, prepare: Callable[[Any], Callable[[str], None]]) -> None:
        self.prepare = prepare

    def __call__(self, tmp_path: str, raft_data: Any) -> None:  # PySyncObj's synchronous form
        self.prepare(raft_data)(tmp_path)


class _BackgroundSerializer(_DurableSerializer):
    """PySyncObj's serializer, with the snapshot written off the tick thread.

    ``serialize`` (tick thread) only freezes the state (``_SnapshotWriter.prepare``) and
    starts a thread that encodes and fsyncs the temporary file; ``checkSerializing``
    (tick thread) answers SERIALIZING until it is done, then renames it into place and
    fsyncs the directory *on the tick thread*, so the rename is ordered with snapshot
    installs: a snapshot installed meanwhile wins and the older one is discarded
    (FAILED: PySyncObj keeps the journal whole). Until then no transmission reads the
    file (PySyncObj's rule while it serializes). Installs are ``_DurableSerializer``'s.
    An ``OSError`` writing or renaming the file ends the process (``fail_stop``)."""

    def __init__(self, file_name: str, batch: int, use_fork: bool, writer: _SnapshotWriter, *rest: Any) -> None:
        super().__init__(file_name, batch, False, writer, *rest)
        self._file_name = file_name
        self._writer = writer
        self._thread: threading.Thread | None = None
        self._written: bool = False
        self._installs = 0
        self._installs_at_start = 0
        self._started = 0.0
        self.snapshots_written = 0
        self.compacted_at: deque[int] = deque(maxlen=64)  # the index of each snapshot written
        self.last_seconds = 0.0
        self.max_seconds = 0.0

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def serialize(self, data: Any, id: Any) -> None:
        if self._thread is not None:
            return
        self._Serializer__currentID = id
        write = self._writer.prepare(data[1:])
        self._installs_at_start = self._installs
        self._started = time.monotonic()
        self._written = False
        self._Serializer__pid = -3  # "busy" for PySyncObj's own checks (no transmission)
        self._thread = threading.Thread(target=self._write, args=(write,), name="rdb-snapshot", daemon=True)
        self._thread.start()

    def _write(self, write: Callable[[str], None]) -> None:
        tmp = self._file_name + ".tmp"
        try:
            write(tmp)
            self._written = True
        except OSError as exc:
            fail_stop(f"writing the snapshot {tmp}", exc)
        except Exception:  # a failed snapshot only means no compaction yet
            log.exception("encoding the snapshot failed; the journal is kept whole")

    def checkSerializing(self) -> tuple[int, Any]:  # noqa: N802 - PySyncObj's name
        thread = self._thread
        if thread is None:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        current = self._Serializer__currentID
        if thread.is_alive():
            return SERIALIZER_STATE.SERIALIZING, current
        thread.join()
        self._thread = None
        self._Serializer__pid = 0
        tmp = self._file_name + ".tmp"
        if not self._written or self._installs != self._installs_at_start:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return SERIALIZER_STATE.FAILED, current
        try:
            failpoint("snapshot.before_rename")
            os.replace(tmp, self._file_name)
            failpoint("snapshot.after_rename")
            fsync_directory(os.path.dirname(os.path.abspath(self._file_name)))
        except OSError as exc:
            fail_stop(f"renaming the snapshot {tmp} into place", exc)
        self._end_sends()  # a newer snapshot: sends of the old one restart
        gc.freeze()  # what survived this long is long-lived: keep it out of full collections
        self.snapshots_written += 1
        self.compacted_at.append(int(current))
        self.last_seconds = time.monotonic() - self._started
        self.max_seconds = max(self.max_seconds, self.last_seconds)
        return SERIALIZER_STATE.SUCCESS, current

    def setTransmissionData(self, data: Any) -> bool:  # noqa: N802 - PySyncObj's name
        installed = bool(super().setTransmissionData(data))
        if installed:
            self._installs += 1  # a snapshot being written now is older: discard it
        return installed


def compaction_point(first: int, every: int, rank: int, members: int) -> int:
    """The applied index at which this node compacts next: the first point after
    ``first`` (the last index its snapshot covers) on the grid ``offset + m * every``, where the offset is
    ``rank / members`` of ``every``. Nodes of one cluster (ranks 0..members-1) therefore
    compact ``every / members`` entries apart, never all at once."""
    offset = every * (rank % max(1, members)) // max(1, members)
    return offset + ((first - offset) // every + 1) * every


def _create_serializer(fileName: Any, *args: Any) -> Any:  # noqa: N803 - PySyncObj's name
    # SyncObj.__init__ builds its serializer by name: the same seam as createJournal.
    if not isinstance(fileName, _SnapshotPath):
        return Serializer(fileName, *args)
    if isinstance(args[2], _SnapshotWriter):  # (batch, use_fork, serializer, ...)
        return _BackgroundSerializer(fileName, *args)
    return _DurableSerializer(fileName, *args)


_pysyncobj_module.Serializer = _create_serializer


#: Largest Raft frame a peer may announce (a batch is capped at 4 MiB, plus one entry
#: of at most 1 MiB, plus Fernet's base64); larger drops the connection unread.
MAX_FRAME_BYTES = 64 * 1024 * 1024
_FRAME_HEADER = struct.Struct("i")  # PySyncObj's native signed int length prefix


def _frame_length_ok(conn: Any, buf: bytearray) -> bool:
    if len(buf) < _FRAME_HEADER.size:
        return True
    (length,) = _FRAME_HEADER.unpack_from(buf, 0)
    if 0 <= length <= MAX_FRAME_BYTES:
        return True
    log.warning(
        "dropping a Raft connection: its frame is too large",
        extra={"event": "raft_frame_too_large", "fields": {"bytes": length, "limit": MAX_FRAME_BYTES}},
    )
    conn.disconnect()
    return False


def _read_buffer(conn: Any) -> bytearray:
    buf = conn._TcpConnection__readBuffer
    if not isinstance(buf, bytearray):  # PySyncObj resets it to bytes() on (dis)connect
        buf = conn._TcpConnection__readBuffer = bytearray(buf)
    return buf


def _process_read(self: Any) -> bool:
    """``TcpConnection.__processRead`` with a frame-size cap and amortised appends."""
    sock = self._TcpConnection__socket
    try:
        incoming = sock.recv(self._TcpConnection__recvBufferSize)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.disconnect()
        return False
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or not incoming:
        self.disconnect()
        return False
    buf = _read_buffer(self)
    buf += incoming
    return _frame_length_ok(self, buf)


_FERNET_VERSION = 0x80


def fernet_time(token: bytes) -> int:
    """The time a Fernet token carries, read from its first 12 base64 characters (the
    version byte and the 8-byte big-endian time) without checking the token: the caller
    must verify it (``decrypt``) before trusting the value. Raises ``ValueError`` if the
    head is not a Fernet token's."""
    head = base64.urlsafe_b64decode(token[:12])
    if len(head) != 9 or head[0] != _FERNET_VERSION:
        raise ValueError("not a Fernet token")
    return int.from_bytes(head[1:9], "big")


def _process_parse_message(self: Any) -> Any:
    """``TcpConnection.__processParseMessage`` on the ``bytearray`` buffer, same checks."""
    buf = _read_buffer(self)
    if len(buf) < _FRAME_HEADER.size or not _frame_length_ok(self, buf):
        return None
    (length,) = _FRAME_HEADER.unpack_from(buf, 0)
    if len(buf) - _FRAME_HEADER.size < length:
        return None
    data = bytes(buf[_FRAME_HEADER.size : _FRAME_HEADER.size + length])
    try:
        if self.encryptor:
            # One MAC check: PySyncObj verified the token twice (extract_timestamp, then
            # decrypt). The time is read unverified and trusted only once decrypt has
            # verified the MAC, which covers it.
            timestamp = fernet_time(data)
            data = self.encryptor.decrypt(data)
            if timestamp < self.recvLastTimestamp:
                raise ValueError("replayed frame")
            self.recvLastTimestamp = timestamp
        message = _pysyncobj_pickle.loads(StoredZlib.decompress(data))
        if self.recvRandKey:
            rand_key, message = message
            if rand_key != self.recvRandKey:
                raise ValueError("wrong session key")
    except Exception:  # noqa: BLE001 - as PySyncObj: any bad frame drops the connection
        self.disconnect()
        return None
    del buf[: _FRAME_HEADER.size + length]  # O(1) at the front of a bytearray
    return message


_pysyncobj_tcp.TcpConnection._TcpConnection__processRead = _process_read
_pysyncobj_tcp.TcpConnection._TcpConnection__processParseMessage = _process_parse_message


def _no_flush() -> None:
    """Stands in for a connection's flush while ``release_held`` fills its buffer."""


_CONNECTED = CONNECTION_STATE.CONNECTED


def _is_member_address(text: str) -> bool:
    """``host:port`` with a numeric port: what a member names itself with."""
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536)


class _HoldingTransport(TCPTransport):  # type: ignore[misc]
    """TCP transport that holds every outgoing message while the journal is dirty."""

    def __init__(self, sync_obj: Any, self_node: Any, other_nodes: Any) -> None:
        self._held: list[tuple[Any, Any]] = []
        #: Connections from members this node's configuration does not list yet (see
        #: ``_onIncomingMessageReceived``), by node; they carry AppendEntries only.
        self._foreign: set[Any] = set()
        #: Forwarded commands and their answers gathered during one drain of the command
        #: queue (``batch_forwards``), per destination; None outside a drain.
        self._forwards: dict[Any, list[Any]] | None = None
        self.forward_batches = 0  # BATCH messages sent, for tests and benchmarks
        self.sent_held = 0  # messages held back for a group commit...
        self.sent_merged = 0  # ...and how many actually left after coalescing
        super().__init__(sync_obj, self_node, other_nodes)

    # ------------------------------------------------------------ members we do not know yet

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:  # noqa: N802 - PySyncObj's name
        """Accept a connection from a member this node's configuration does not list yet
        (tick thread).

        PySyncObj drops it. A node that was down while members were added restarts with
        its old configuration; if one of the new members is now the leader, it dials
        this node (the higher address dials) and is dropped every time, so this node
        never hears of the change and campaigns forever (found by a 20-minute five-node
        chaos run). Raft has servers answer RPCs without consulting their configuration;
        here only AppendEntries is taken from such a node (its RequestVote is ignored,
        so a removed server cannot disrupt the cluster), until the configuration names
        it (``addNode``). The peer has passed the cluster secret's handshake already."""
        # Only a str can name a node: the handshake's key is bytes, a utility command a
        # list (unhashable: test for str before looking it up).
        handshaking = self._syncObj.encryptor and not conn.sendRandKey
        if (
            handshaking
            or not isinstance(message, str)
            or message == "readonly"
            or message in self._nodeAddrToNode
            or not _is_member_address(message)
        ):
            super()._onIncomingMessageReceived(conn, message)
            return
        node = TCPNode(message)
        self._unknownConnections.discard(conn)
        old = self._connections.get(node)
        if old is not None and old is not conn:
            old.disconnect()
        self._connections[node] = conn
        self._foreign.add(node)
        conn.setOnMessageReceivedCallback(functools.partial(self._from_foreign, node))

    def _from_foreign(self, node: Any, message: Any) -> None:
        if node not in self._foreign:  # the configuration names it now: everything counts
            self._onMessageReceived(node, message)
        elif isinstance(message, dict) and message.get("type") == "append_entries":
            self._onMessageReceived(node, message)

    def addNode(self, node: Any) -> None:  # noqa: N802 - PySyncObj's name
        """A member joins the configuration; if it had already reached us as a foreign
        node, its connection becomes a member's (tick thread)."""
        super().addNode(node)
        if node in self._foreign:
            self._foreign.discard(node)
            conn = self._connections.get(node)
            if conn is not None and conn.state == _CONNECTED:
                self._onNodeConnected(node)

    def _onDisconnected(self, conn: Any) -> None:  # noqa: N802 - PySyncObj's name
        node = self._connToNode(conn)
        if node is not None and node in self._foreign:
            self._foreign.discard(node)
            self._connections.pop(node, None)
            return
        super()._onDisconnected(conn)

    def send(self, node: Any, message: Any) -> bool:
        mtype = message.get("type")
        if mtype == "append_entries":
            # The round this AppendEntries belongs to; the follower's answer echoes it
            # (ReadIndex confirms leadership with it).
            message["probe"] = getattr(self._syncObj, "probe_round", 0)
        elif self._forwards is not None and mtype in _FORWARDS:
            self._forwards.setdefault(node, []).append(message)
            return True
        journal = getattr(self._syncObj, "_rdb_journal", None)
        if journal is not None and (journal.dirty or self._held):
            # A follower's acknowledgement must wait for the fsync of what it acknowledges;
            # the leader's entries need not (Raft: the leader persists in parallel), so its
            # fsync and its followers' overlap. Nothing held yet: the order is kept.
            if self._held or mtype not in _LEADER_SENDS_AT_ONCE or self._syncObj._SyncObj__raftState != _LEADER:
                self._held.append((node, message))
                return True
        return bool(super().send(node, message))

    @contextlib.contextmanager
    def batch_forwards(self) -> Iterator[None]:
        """Gather the ``apply_command`` messages (follower -> leader) and their answers
        (leader -> follower) sent inside the block, and send them as one ``BATCH``
        message per destination at its end, in order: one pickle, one encryption and one
        frame for a whole drain of the command queue instead of one per write. Tick
        thread only."""
        self._forwards = {}
        try:
            yield
        finally:
            forwards, self._forwards = self._forwards, None
            for node, messages in forwards.items():
                if len(messages) == 1:
                    self.send(node, messages[0])
                else:
                    self.forward_batches += 1
                    self.send(node, {"type": BATCH, "messages": messages})

    def release_held(self) -> None:
        held, self._held = self._held, []
        self.sent_held += len(held)
        merged = coalesce_outgoing(held)
        self.sent_merged += len(merged)
        if len(merged) <= 1:
            for node, message in merged:
                super().send(node, message)
            return
        # One send() system call per connection, not one per message: each connection
        # only appends to its buffer (its flush method is shadowed on the instance), then
        # flushes once. Runs on the tick thread, the only one that sends.
        conns = {id(c): c for node, _ in merged if (c := self._connections.get(node)) is not None}
        for conn in conns.values():
            conn._TcpConnection__trySendBuffer = _no_flush
        try:
            for node, message in merged:
                super().send(node, message)
        finally:
            for conn in conns.values():
                del conn._TcpConnection__trySendBuffer
            for conn in conns.values():
                conn._TcpConnection__trySendBuffer()


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who leads, as this node sees it: the part of ``RaftStatus`` a loop asking every
    few milliseconds needs (``RaftNode.leadership``)."""

    role: str
    leader: str | None
    quorum: bool  # a majority heard from within the quorum window (see ``RaftNode.status``)


@dataclass(frozen=True, slots=True)
class ReadPosition:
    """Where this node's reads stand: the part of ``RaftStatus`` a serializable read
    reports with its answer (``RaftNode.read_position``)."""

    applied_index: int
    commit_index: int
    quorum: bool


@dataclass(frozen=True, slots=True)
class RaftStatus:
    role: str
    term: int
    leader: str | None
    commit_index: int
    applied_index: int
    leader_commit_index: int | None  # the newest commit index heard from the leader
    last_index: int
    quorum: bool
    members: list[str]
    connected: list[str]
    journal_syncs: int
    journal_bytes: int
    messages_held: int  # Raft messages held back for group commits...
    messages_sent_after_merge: int  # ...and how many left after coalescing
    truncations_below_commit: int
    suppressed_truncations: int
    snapshots_written: int = 0  # compactions finished by this process...
    snapshot_seconds_last: float = 0.0  # ...how long the last one took (freeze to rename)
    snapshot_seconds_max: float = 0.0
    tick_stall_max_10s: float = 0.0  # the longest tick-thread stall in the last 10 s


def dump_snapshot(path: str, state: bytes, last: Any, prev: Any, cluster: list[str]) -> None:
    """Write a snapshot file with fsync (the caller renames it and fsyncs the dir)."""
    write_snapshot(path, [state], last, prev, cluster)


def write_snapshot(path: str, state: Iterable[bytes], last: Any, prev: Any, cluster: list[str]) -> None:
    """Write a snapshot file from the state's encoding in pieces, with fsync, holding
    about 1 MiB of it at a time (the caller renames it and fsyncs the dir). The file is
    what ``load_snapshot`` reads: the lengths are filled in once the state is written."""
    packer = msgpack.Packer(use_bin_type=True)
    head = b"".join(
        [
            packer.pack_map_header(4),
            *(
                packer.pack(k) + packer.pack(v)
                for k, v in (("last", list(last)), ("prev", list(prev)), ("cluster", cluster))
            ),
            packer.pack("state"),
        ]
    )
    prefix = _SNAPSHOT_MAGIC + bytes(8) + head + b"\xc6" + bytes(4)  # msgpack bin 32, length later
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, prefix)
        written = 0
        buffer = bytearray()
        for piece in state:
            buffer += piece
            if len(buffer) >= 1 << 20:
                _write_all(fd, buffer)
                written += len(buffer)
                buffer.clear()
        _write_all(fd, buffer)
        written += len(buffer)
        if written >= 1 << 32:
            raise ValueError("a snapshot's state is at most 4 GiB")
        os.pwrite(fd, struct.pack(">I", written), len(prefix) - 4)
        os.pwrite(fd, struct.pack("<Q", len(head) + 5 + written), len(_SNAPSHOT_MAGIC))
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def load_snapshot(path: str) -> tuple[bytes, Any, Any, list[str]]:
    """Raises ``OSError``, or ``ValueError`` saying what is wrong with the file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != _SNAPSHOT_MAGIC:
        raise ValueError(f"{path} is not an rdbsync snapshot")
    if len(data) < 16:
        raise ValueError(f"{path} is truncated (no length)")
    (length,) = struct.unpack_from("<Q", data, 8)
    body = data[16 : 16 + length]
    if len(body) != length or len(data) != 16 + length:
        raise ValueError(f"{path} is truncated or has trailing bytes ({len(data) - 16} body bytes, {length} expected)")
    try:
        doc = msgpack.unpackb(body, raw=False)
        state, last, prev, cluster = doc["state"], doc["last"], doc["prev"], list(doc["cluster"])
        if not isinstance(state, bytes) or len(last) != 3 or len(prev) != 3:
            raise ValueError("bad fields")
        int(last[1]), int(last[2]), int(prev[1]), int(prev[2])
    except (ValueError, KeyError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise ValueError(f"{path} is not a valid rdbsync snapshot ({exc})") from None
    return state, last, prev, cluster


def check_snapshot_file(path: str) -> str | None:
    """What is wrong with a snapshot file's header and length, or None. Cheap: reads 16
    bytes and the size (the body is decoded when it is loaded)."""
    with open(path, "rb") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if head[:8] != _SNAPSHOT_MAGIC:
        return f"{path} is not an rdbsync snapshot"
    if len(head) < 16 or size != 16 + struct.unpack_from("<Q", head, 8)[0]:
        return f"{path} is truncated"
    return None


def journal_holds(journal: DurableJournal, index: int, term: int) -> bool:
    """True if ``journal`` holds the entry ``index`` with ``term``: by Raft's log
    matching property its entries up to there are the ones a snapshot ending there
    holds, so the entries after it can be kept."""
    first = journal.first_index
    if not first or not first <= index <= journal.last_index:
        return False
    return int(journal[index - first][2]) == term


def open_data_files(dump: str, journal_path: str) -> tuple[tuple[bytes, Any, Any, list[str]] | None, DurableJournal]:
    """Load the snapshot (if any) and open the journal, checking that together they
    hold every committed entry. Returns (the loaded snapshot or None, the journal).

    Raises ``StorageCorrupt`` (naming the file and what to do) for a snapshot that does
    not load, a journal that stops below the recorded commit index, or one that starts
    past what the snapshot covers; ``OSError`` if a file cannot be read. PySyncObj
    logged a failed load and ran on an empty state, wedged."""
    snapshot = None
    covered = 0
    if os.path.exists(dump):
        try:
            snapshot = load_snapshot(dump)
        except (OSError, ValueError) as exc:
            raise StorageCorrupt(
                f"the snapshot {dump} cannot be loaded: {exc}; {StorageCorrupt.REMEDY}", dump
            ) from None
        covered = int(snapshot[1][1])
    journal = DurableJournal(journal_path, covered_index=covered)
    first = journal.first_index
    if snapshot is None and first > 1:
        problem = f"the journal {journal_path} starts at index {first} (compacted) but there is no snapshot {dump}"
    elif snapshot is not None and first > covered:
        problem = f"the journal {journal_path} starts at index {first}, after the snapshot {dump} ends ({covered})"
    else:
        return snapshot, journal
    journal.close_quietly()
    raise StorageCorrupt(f"{problem}; {StorageCorrupt.REMEDY}", journal_path)


class RaftNode(MembershipRules, SyncObj):  # type: ignore[misc]
    """PySyncObj node with our durability, truncation, snapshot and membership fixes.

    ``self_address`` None makes a *learner*: it replicates the log without voting
    (PySyncObj's read-only node; see ``rdb._raft_membership``).

    ``apply_fn(payload, index)`` runs on the tick thread for every committed command, in
    log order, and must never raise. ``snapshot_fn()`` runs on the tick thread and
    returns the state's encoding as an iterable of byte pieces over a *frozen* copy: it is
    consumed on the snapshot thread while later commands apply. ``restore_fn(state,
    index)`` replaces it (a *load event*: snapshot install or restart from a dump).

    Compaction: every ``compaction_entries`` applied entries, at a per-node offset (see
    ``compaction_point``), after ``compaction_seconds`` (also offset per node), or once
    the journal passes ``COMPACT_AT_BYTES``; the snapshot is encoded and written off the
    tick thread (``_BackgroundSerializer``).
    """

    def __init__(
        self,
        self_address: str | None,
        partner_addresses: list[str],
        data_dir: str,
        *,
        password: str,
        apply_fn: Callable[[bytes, int], Any],
        snapshot_fn: Callable[[], Iterable[bytes]],
        restore_fn: Callable[[bytes, int], None],
        compaction_entries: int = 20_000,
        compaction_seconds: float = 300.0,
        election_timeout: tuple[float, float] = (0.6, 1.2),
        rng: random.Random | None = None,
    ) -> None:
        self._apply_fn = apply_fn
        # Draws the shortened waits after a leader is lost; a test passes its own.
        self._rng = rng if rng is not None else random.Random()
        self._snapshot_fn = snapshot_fn
        self._restore_fn = restore_fn
        self._data_dir = data_dir
        self._verified_term = -1
        self._verified_index = 0
        self._suppress_truncation = False
        self.truncations_below_commit = 0
        self.suppressed_truncations = 0
        self.last_leader_contact = 0.0
        #: The commit index the leader of the current term last sent, as sent. PySyncObj
        #: keeps the capped one (``_rewrite_append``: at most this message's verified
        #: entries), which on a learner catching up is always its own last index.
        self._leader_commit_sent: int | None = None
        self.append_decisions: dict[str, int] = {}
        self._last_forced_compaction = 0.0
        self._compact_after: float | None = None  # monotonic; see compact_soon
        self._wake_pending = False
        self.stale_acks_ignored = 0
        # ReadIndex (see read_index). Leader side: reads waiting for a round of
        # AppendEntries to confirm the leadership; a reply is a local callback or the
        # (node, id) that asked. Every node: reads waiting to apply their index, reads
        # asked of the leader, and reads queued from other threads.
        self._leader_reads: LeaderReads[ReadCallback | tuple[Any, int]] = LeaderReads()
        self._applied_reads: AppliedWaiters[ReadCallback] = AppliedWaiters()
        self._reads_asked: dict[int, ReadCallback] = {}
        self._reads_asked_count = 0
        self._read_queue: deque[ReadCallback] = deque()
        #: The round of the AppendEntries being sent (leader) and of the one being
        #: answered (follower).
        self.probe_round = 0
        self._probe_echo = 0
        self.read_index_rounds = 0  # reads confirmed by the leader, for tests
        # Pre-vote: the round in progress, and the term a won round lets PySyncObj stand in.
        self._pre_vote: PreVoteRound | None = None
        self._cleared_term: int | None = None
        self._election_timeout = election_timeout
        self._min_election_timeout = election_timeout[0]
        self.pre_votes_started = 0
        self.pre_votes_won = 0
        self.leader_losses = 0  # links to the leader that closed, each shortening the wait
        self._leader_lost = False
        #: Called with the seconds each group-commit fdatasync took (tick thread).
        self.on_fsync: Callable[[float], None] | None = None
        self.tick_stalls: deque[tuple[float, float]] = deque(maxlen=256)
        self._compaction_entries = compaction_entries
        # This node's place among the members: its compactions are offset by that share.
        # A learner (no address of its own) takes the slot after the voters.
        members = sorted(set(partner_addresses) | ({self_address} if self_address else set()))
        rank = members.index(self_address) if self_address else len(members)
        self._compaction_rank = (rank, len(members) + (0 if self_address else 1))
        stagger = 1.0 + self._compaction_rank[0] / self._compaction_rank[1] / 2
        os.makedirs(data_dir, exist_ok=True)
        dump = _SnapshotPath(os.path.join(data_dir, "raft.snapshot"))
        journal_path = _JournalPath(os.path.join(data_dir, "raft.journal"))
        self._preloaded, journal_path.journal = open_data_files(dump, journal_path)
        conf = SyncObjConf(
            password=password,
            journalFile=journal_path,
            fullDumpFile=dump,
            serializer=_SnapshotWriter(self._prepare_snapshot),
            deserializer=self._deserialize_from,
            useFork=False,
            appendEntriesUseBatch=False,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            raftMinTimeout=election_timeout[0],
            raftMaxTimeout=election_timeout[1],
            # Heartbeats several times per minimum election timeout: a follower must not
            # stand for election because one heartbeat was late.
            appendEntriesPeriod=min(0.1, election_timeout[0] / 6),
            connectionTimeout=max(3.5, election_timeout[1]),
            # PySyncObj redials a lost peer only every 5 s, and only the node with the
            # higher address dials. Two followers whose link dropped (one restarted) then
            # cannot elect a new leader for up to 5 s after the leader dies.
            connectionRetryTime=CONNECTION_RETRY_SECONDS,
            leaderFallbackTimeout=max(2.0, election_timeout[1] * 1.5),
            # Larger than any single entry (1 MiB values), so PySyncObj never takes its
            # buggy chunked-transmission path for one big entry.
            appendEntriesBatchSizeBytes=4 * 1024 * 1024,
            # Entry counts are ours (staggered, in _persist_and_release); PySyncObj would
            # have every node compact at the same index.
            logCompactionMinEntries=2**62,
            logCompactionMinTime=compaction_seconds * stagger,
            logCompactionSplit=False,
        )
        # The snapshot thread (and a restore being checked) run Python for seconds; the
        # tick thread, back from each system call, waits for the GIL up to the switch
        # interval (5 ms by default), tick after tick. A shorter one keeps it on time.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        super().__init__(self_address, partner_addresses, conf=conf, transportClass=_HoldingTransport)
        disable_utility_membership(self._SyncObj__transport)
        self.addOnTickCallback(self._persist_and_release)

    # ------------------------------------------------------------ the log entry point

    @replicated  # type: ignore[untyped-decorator]
    def _rdb_apply(self, payload: bytes) -> Any:
        # raftLastApplied is incremented after this returns: +1 is this entry's index.
        return self._apply_fn(payload, self.raftLastApplied + 1)

    # ------------------------------------------------------------ waking the tick thread

    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:  # noqa: N802,N803
        # PySyncObj writes to its wake-up pipe for every queued command (a system call
        # each, from the HTTP loop and the tick thread alike); one pending wake-up is
        # enough. The flag is cleared before the queue is drained (below), so a command
        # queued after the drain began always sends a fresh wake-up: none is lost.
        commands = self._SyncObj__commandsQueue
        try:
            commands.put_nowait(
                (command, callback) if commandType is None else (bytes([commandType]) + command, callback)
            )
        except queue.Full:
            self._SyncObj__callErrCallback(FAIL_REASON.QUEUE_FULL, callback)
            return
        if not self._wake_pending:
            self._wake_pending = True
            self._SyncObj__pipeNotifier.notify()

    def _checkCommandsToApply(self) -> None:  # noqa: N802
        self._wake_pending = False
        conf = self._SyncObj__conf
        journal = self._rdb_journal
        before = journal.last_index
        with self._SyncObj__transport.batch_forwards():
            # With batching off, PySyncObj's leader sends a round of AppendEntries after
            # every command it appends; one round for the whole drain carries them all.
            conf.appendEntriesUseBatch = True
            try:
                super()._checkCommandsToApply()
            finally:
                conf.appendEntriesUseBatch = False
            if self._SyncObj__raftState == _LEADER and journal.last_index != before:
                self._SyncObj__sendAppendEntries()
            self._serve_read_queue()

    def propose(self, payload: bytes, callback: Callable[[Any, int], None]) -> None:
        """Queue ``payload`` for the log. ``callback(result, reason)`` runs on the tick
        thread once; ``reason`` is a ``FAIL_REASON``. Safe from any thread."""
        self._rdb_apply(payload, callback=callback)

    # ------------------------------------------------------------ ReadIndex

    def read_index(self, callback: ReadCallback) -> None:
        """Ask for a linearizable read point (ReadIndex; see ``rdb._read_index``).

        ``callback(index, reason)`` runs once on the tick thread. With ``SUCCESS``, this
        node has applied ``index``, which covers every entry committed before the call:
        its state may be read. Otherwise ``index`` is None and ``reason`` says why
        (``MISSING_LEADER``, ``NOT_LEADER``, ``LEADER_CHANGED``): nothing was read, ask
        again. No answer comes while no majority confirms the leader; the caller keeps
        its own deadline. Safe from any thread; no log entry and no fsync."""
        self._read_queue.append(callback)
        if not self._wake_pending:
            self._wake_pending = True
            self._SyncObj__pipeNotifier.notify()

    def _serve_read_queue(self) -> None:
        # Tick thread, inside batch_forwards: the questions to the leader leave in one
        # message with the forwarded commands.
        self._drop_leader_reads_of_another_term()
        local = False
        while self._read_queue:
            callback = self._read_queue.popleft()
            leader = self._SyncObj__raftLeader
            if self._SyncObj__raftState == _LEADER:
                self._leader_reads.request(self.raftCurrentTerm, self._read_index_now(), callback)
                local = True
            elif leader is not None:
                self._reads_asked_count += 1
                self._reads_asked[self._reads_asked_count] = callback
                self._SyncObj__transport.send(leader, {"type": READ_INDEX, "id": self._reads_asked_count})
            else:
                callback(None, FAIL_REASON.MISSING_LEADER)
        if local:
            if self._SyncObj__otherNodes:
                self._SyncObj__sendAppendEntries()  # the round that confirms them
            self._confirm_leader_reads()

    def _read_index_now(self) -> int:
        # The commit index, and at least this term's no-op: everything committed by
        # earlier leaders lies below it (a new leader's commit index may lag until then).
        return max(int(self.raftCommitIndex), int(self._SyncObj__noopIDx or 0))

    def _drop_leader_reads_of_another_term(self) -> None:
        reads = self._leader_reads
        if len(reads) and (self._SyncObj__raftState != _LEADER or reads.term != self.raftCurrentTerm):
            for read in reads.drop():
                self._answer_leader_read(read.reply, None, FAIL_REASON.NOT_LEADER)

    def _on_read_index_request(self, node: Any, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if not isinstance(request_id, int):
            return
        self._drop_leader_reads_of_another_term()
        if self._SyncObj__raftState != _LEADER:
            self._answer_leader_read((node, request_id), None, FAIL_REASON.NOT_LEADER)
            return
        self._leader_reads.request(self.raftCurrentTerm, self._read_index_now(), (node, request_id))
        self._SyncObj__newAppendEntriesTime = 0.0  # the next tick (right after this poll) sends the round

    def _confirm_leader_reads(self) -> None:
        if self._SyncObj__raftState != _LEADER:
            return
        for read in self._leader_reads.confirmed(self.raftCurrentTerm, self._SyncObj__otherNodes):
            self.read_index_rounds += 1
            self._answer_leader_read(read.reply, read.index, FAIL_REASON.SUCCESS)

    def _answer_leader_read(self, reply: ReadCallback | tuple[Any, int], index: int | None, reason: int) -> None:
        if isinstance(reply, tuple):
            node, request_id = reply
            answer: dict[str, Any] = {"type": READ_INDEX_REPLY, "id": request_id}
            if index is None:
                answer["error"] = reason
            else:
                answer["index"] = index
            self._SyncObj__transport.send(node, answer)
        elif index is None:
            reply(None, reason)
        else:
            self._applied_reads.add(index, reply)
            self._answer_applied_reads()

    def _on_read_index_reply(self, message: dict[str, Any]) -> None:
        callback = self._reads_asked.pop(message.get("id"), None)  # type: ignore[arg-type]
        if callback is None:
            return
        index = message.get("index")
        if isinstance(index, int):
            self._applied_reads.add(index, callback)
            self._answer_applied_reads()
        else:
            error = message.get("error")
            callback(None, error if isinstance(error, int) else FAIL_REASON.NOT_LEADER)

    def _answer_applied_reads(self) -> None:
        if len(self._applied_reads):
            for index, callback in self._applied_reads.ready(int(self.raftLastApplied)):
                callback(index, FAIL_REASON.SUCCESS)

    def _SyncObj__applyLogEntries(self) -> bool:  # noqa: N802 - PySyncObj's name
        # A leader whose commit index moved tells its followers before it applies (PySyncObj
        # applies first): their applies then overlap its own, not follow it.
        sent_first = self._SyncObj__raftState == _LEADER and self.raftCommitIndex > self.raftLastApplied
        if sent_first:
            self._SyncObj__sendAppendEntries()
        need_send: bool = super()._SyncObj__applyLogEntries()
        self._answer_applied_reads()
        return need_send and not sent_first

    def _SyncObj__sendAppendEntries(self) -> None:  # noqa: N802 - PySyncObj's name
        self.probe_round = self._leader_reads.round_sent()
        super()._SyncObj__sendAppendEntries()

    def _SyncObj__onLeaderChanged(self) -> None:  # noqa: N802 - PySyncObj's name
        super()._SyncObj__onLeaderChanged()
        # Questions asked of the old leader get no answer now: ask again.
        asked, self._reads_asked = self._reads_asked, {}
        for callback in asked.values():
            callback(None, FAIL_REASON.LEADER_CHANGED)

    # ------------------------------------------------------------ durability

    @property
    def _rdb_journal(self) -> DurableJournal:
        journal: DurableJournal = self._SyncObj__raftLog
        return journal

    def _persist_and_release(self) -> None:
        # An fsync that fails ends the process (DurableJournal's fail_stop): PySyncObj
        # would retry the tick forever, and what was acknowledged may not be on disk.
        started = time.perf_counter()
        if self._rdb_journal.sync() and self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - started)
        self._SyncObj__transport.release_held()
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Start a compaction when this node's next point is reached (tick thread). Runs
        after PySyncObj's compaction step in the same tick, so a compaction that just
        finished has already moved the journal's first index."""
        serializer = self._SyncObj__serializer
        if getattr(serializer, "busy", False):
            return  # forcing now would start another one as soon as this one ends
        journal = self._rdb_journal
        if not len(journal):
            return
        if self._compact_after is not None and time.monotonic() >= self._compact_after:
            self._compact_after = None
            self._last_forced_compaction = time.monotonic()
            self.forceLogCompaction()
            return
        rank, members = self._compaction_rank
        # After a compaction the journal starts at the snapshot's prev entry; the
        # snapshot covers the next one too.
        due = compaction_point(journal[0][1] + 1, self._compaction_entries, rank, members)
        if self.raftLastApplied >= due:
            self.forceLogCompaction()
            return
        # Big values must not grow the journal (held in memory too) without bound.
        if journal.size_bytes > COMPACT_AT_BYTES * (1 + rank / members) and (
            time.monotonic() - self._last_forced_compaction > 5.0
        ):
            self._last_forced_compaction = time.monotonic()
            self.forceLogCompaction()

    def compact_soon(self) -> None:
        """Compact what is applied now, ``RESTORE_COMPACT_STAGGER`` seconds times this
        node's rank from now (tick thread: called from the apply of a restore)."""
        rank, _ = self._compaction_rank
        self._compact_after = time.monotonic() + rank * RESTORE_COMPACT_STAGGER

    def _doDestroy(self) -> None:  # noqa: N802 - PySyncObj's name
        serializer = self._SyncObj__serializer
        if isinstance(serializer, _DurableSerializer):
            serializer.close_files()
        super()._doDestroy()

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 - PySyncObj's name
        # Entries added while polling (a new leader's no-op, follower appends) become
        # durable before the leader's commit count below, which counts itself.
        if getattr(self, "_SyncObj__transport", None) is not None and self._SyncObj__transport.ready:
            # A follower applies what the leader just said is committed before its own fsync
            # of the entries that came with it: committed entries are on a majority's disks
            # already, and the fsync (then the wait for the GIL) would delay every commit.
            if self._SyncObj__raftState != _LEADER:
                self._SyncObj__applyLogEntries()
            self._persist_and_release()
        # The longest wait between two ticks (a tick polls for up to timeToWait): what a
        # stall of the tick thread looks like from outside, for /v1/status.
        now = time.monotonic()
        last = getattr(self, "_last_tick", now)
        self._last_tick = now
        if now - last > timeToWait + 0.05:
            self.tick_stalls.append((now, now - last))
        if getattr(self, "_SyncObj__transport", None) is not None and self._SyncObj__transport.ready:
            self._election_gate(now)
        super()._onTick(timeToWait)

    # ------------------------------------------------------------ pre-vote

    def _election_gate(self, now: float) -> None:
        """Before PySyncObj's tick stands for election (its deadline passed), ask the
        voters first; PySyncObj stands only once a majority said yes (tick thread)."""
        if self.selfNode is None or self._SyncObj__raftState == _LEADER:
            self._pre_vote = self._cleared_term = None
            return
        if self._SyncObj__transferInProgress:
            return  # the leader handed over to us (TimeoutNow): stand at once, as Raft says
        term = int(self.raftCurrentTerm)
        if self._cleared_term is not None:
            if term < self._cleared_term:
                return  # PySyncObj stands in this tick
            self._cleared_term = None  # it stood (or a newer term came): that clearance is used
        deadline: float = getattr(self, "_SyncObj__raftElectionDeadline")  # noqa: B009 - set by PySyncObj
        if deadline >= now or not self._SyncObj__connectedToAnyone():
            return
        round_ = self._pre_vote
        if round_ is None or round_.term != term + 1 or now >= round_.expires:
            round_ = self._pre_vote = PreVoteRound(term + 1, now + self._SyncObj__generateRaftTimeout())
            self.pre_votes_started += 1
            journal = self._rdb_journal
            ask = {
                "type": PRE_VOTE,
                "term": round_.term,
                "last_log_index": journal.last_index,
                "last_log_term": int(journal[-1][2]),
            }
            for node in self._SyncObj__otherNodes:
                self._SyncObj__transport.send(node, dict(ask))
        # PySyncObj must not stand (and raise the term) before the answers are in.
        self._SyncObj__raftElectionDeadline = round_.expires
        self._maybe_stand()

    def _maybe_stand(self) -> None:
        round_ = self._pre_vote
        if round_ is not None and round_.won(self._SyncObj__otherNodes):
            self.pre_votes_won += 1
            self._pre_vote = None
            self._cleared_term = round_.term
            self._SyncObj__raftElectionDeadline = 0.0  # this tick (or the next) stands

    def _SyncObj__setState(self, new_state: int) -> None:  # noqa: N802 - PySyncObj's name
        old = self._SyncObj__raftState
        super()._SyncObj__setState(new_state)
        if new_state == _LEADER:
            self._leader_lost = False  # its own timeouts are the normal ones if it steps down
        if new_state != old:  # rare (elections): worth a line for whoever reads a failure
            log.info(
                "raft role changed",
                extra={
                    "event": "raft_role",
                    # PySyncObj raises the term right after it turns candidate: the one it stands in.
                    "fields": {
                        "role": ROLE_NAMES.get(new_state, str(new_state)),
                        "term": int(self.raftCurrentTerm) + (1 if new_state == _CANDIDATE else 0),
                    },
                },
            )

    def _SyncObj__generateRaftTimeout(self) -> float:  # noqa: N802 - PySyncObj's name
        if self._leader_lost:
            return self._leader_lost_draw(LEADER_LOST_TIMEOUT)
        timeout: float = super()._SyncObj__generateRaftTimeout()
        return timeout

    def _leader_lost_draw(self, shares: tuple[float, float]) -> float:
        """A wait drawn from ``shares`` of the election timeout range (tick thread)."""
        low, high = self._election_timeout
        return self._rng.uniform(low * shares[0], high * shares[1])

    def _on_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        try:
            ask = PreVoteAsk(int(message["term"]), int(message["last_log_index"]), int(message["last_log_term"]))
        except (KeyError, TypeError, ValueError):
            return
        leader = self._SyncObj__raftLeader
        journal = self._rdb_journal
        granted = self.selfNode is not None and would_vote(
            ask,
            term=int(self.raftCurrentTerm),
            last_index=journal.last_index,
            last_term=int(journal[-1][2]),
            is_leader=self._SyncObj__raftState == _LEADER,
            leader_contact_age=time.monotonic() - self.last_leader_contact,
            leader_link_up=leader is not None and leader in self._SyncObj__connectedNodes,
            min_election_timeout=self._min_election_timeout,
        )
        self._SyncObj__transport.send(
            node,
            {"type": PRE_VOTE_REPLY, "term": ask.term, "granted": granted, "voter_term": int(self.raftCurrentTerm)},
        )

    def _on_pre_vote_reply(self, node: Any, message: dict[str, Any]) -> None:
        round_ = self._pre_vote
        if round_ is None or node not in self._SyncObj__otherNodes:
            return
        term = message.get("term")
        granted = message.get("granted") is True
        voter_term = message.get("voter_term")
        if not granted and isinstance(voter_term, int) and voter_term >= round_.term:
            # We are behind in term: no voter at that term can say yes. Pre-votes change
            # no term, so without this a node with the longest log but an older term and
            # one with a newer term but a shorter log refuse each other for ever (seen in
            # a five-node chaos run). Take the newer term, as any Raft message would
            # make us, and ask again soon.
            self._SyncObj__setCurrentTerm(voter_term, None)
            self._SyncObj__setState(_FOLLOWER)
            self._SyncObj__raftLeader = None
            self._pre_vote = None
            self._SyncObj__raftElectionDeadline = time.monotonic() + self._leader_lost_draw(LEADER_LOST_PAUSE)
            return
        round_.answer(node, term if isinstance(term, int) else -1, granted)
        self._maybe_stand()

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:  # noqa: N802 - PySyncObj's name
        super()._SyncObj__onNodeDisconnected(node)
        if node == self._SyncObj__raftLeader and self._SyncObj__raftState != _LEADER and self.selfNode is not None:
            self.leader_losses += 1
            self._leader_lost = True
            soon = time.monotonic() + self._leader_lost_draw(LEADER_LOST_PAUSE)
            self._SyncObj__raftElectionDeadline = min(self._SyncObj__raftElectionDeadline, soon)

    def tick_stall_max(self, window: float = 10.0) -> float:
        """The longest gap between ticks (beyond the poll wait) in the last ``window``
        seconds. Safe from any thread."""
        since = time.monotonic() - window
        return max((gap for at, gap in list(self.tick_stalls) if at >= since), default=0.0)

    # ------------------------------------------------------------ truncation fix

    def _SyncObj__sendNextNodeIdx(  # noqa: N802 - PySyncObj's name
        self,
        node: Any,
        reset: bool = False,
        nextNodeIdx: int | None = None,  # noqa: N803
        success: bool = False,
    ) -> None:
        # PySyncObj's acknowledgement, stamped with our term: one held back (group
        # commit) or delayed on a dropped connection must not count in a later term.
        next_index = self._rdb_journal.last_index + 1 if nextNodeIdx is None else nextNodeIdx
        self._SyncObj__transport.send(
            node,
            {
                "type": "next_node_idx",
                "next_node_idx": next_index,
                "reset": reset,
                "success": success,
                "term": self.raftCurrentTerm,
                "probe": self._probe_echo,
            },
        )

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        mtype = message.get("type")
        if mtype == BATCH:
            # Forwarded commands or their answers, in the order they were sent (see
            # _HoldingTransport.batch_forwards); anything else in one is dropped.
            for inner in message.get("messages") or ():
                if isinstance(inner, dict) and inner.get("type") in _FORWARDS:
                    self._SyncObj__onMessageReceived(node, inner)
            return
        if mtype == "next_node_idx" and message.get("term", self.raftCurrentTerm) != self.raftCurrentTerm:
            self.stale_acks_ignored += 1  # an unstamped ack is an older peer's: accepted
            return
        if mtype == "next_node_idx" and self._SyncObj__raftState == _LEADER:
            probe = message.get("probe")
            if isinstance(probe, int) and probe > 0:
                self._leader_reads.acknowledged(self.raftCurrentTerm, node, probe)
                if len(self._leader_reads):
                    self._confirm_leader_reads()
        elif mtype == READ_INDEX:
            self._on_read_index_request(node, message)
            return
        elif mtype == PRE_VOTE:
            self._on_pre_vote(node, message)
            return
        elif mtype == PRE_VOTE_REPLY:
            self._on_pre_vote_reply(node, message)
            return
        elif mtype == READ_INDEX_REPLY:
            self._on_read_index_reply(message)
            return
        elif mtype == "append_entries":
            probe = message.get("probe")
            self._probe_echo = probe if isinstance(probe, int) else 0
            if message.get("term", -1) >= self.raftCurrentTerm:
                # A leader is alive: late yeses, or a clearance not used yet, must not make
                # us stand later without asking.
                self._pre_vote = self._cleared_term = None
                self._leader_lost = False
        if mtype == "append_entries" and message.get("term", -1) >= self.raftCurrentTerm:
            self.last_leader_contact = time.monotonic()
            sent = message.get("commit_index")
            if isinstance(sent, int):
                self._leader_commit_sent = sent  # the term is ours, or PySyncObj adopts it now
            if "prevLogIdx" in message and "transmission" not in message:
                message = self._rewrite_append(message)
            elif message.get("transmission") != "finish":
                return self._receive_unverifying_append(node, message)
        if mtype == "next_node_idx" and message.get("success") and not message.get("reset"):
            next_index = self._SyncObj__raftNextIndex
            before = next_index.get(node)
            super()._SyncObj__onMessageReceived(node, message)
            if before is not None and node in next_index and next_index[node] < before:
                next_index[node] = before  # never re-send what is already in flight
            return
        try:
            super()._SyncObj__onMessageReceived(node, message)
        finally:
            self._suppress_truncation = False

    def _receive_unverifying_append(self, node: Any, message: dict[str, Any]) -> None:
        """An AppendEntries that checks none of our log: a snapshot chunk (``serialized``)
        or the start of a large entry sent in parts. PySyncObj still adopts its commit
        index up to our last entry, which after a term change can be a deposed leader's
        tail that no majority ever held: the node then applied, served and streamed to
        watchers writes that were never committed. The commit index is capped at what
        this leader has verified (``_rewrite_append``); a snapshot that installs sets its
        own. The leader's raw commit index is kept for status and promotion."""
        term = message["term"]
        verified = self._verified_index if term == self._verified_term else 0
        raw = message.get("commit_index", 0)
        super()._SyncObj__onMessageReceived(node, dict(message, commit_index=min(raw, verified)))
        if self.raftCurrentTerm == term:
            self._SyncObj__leaderCommitIndex = raw

    def _rewrite_append(self, message: dict[str, Any]) -> dict[str, Any]:
        term = message["term"]
        if term != self._verified_term:
            self._verified_term, self._verified_index = term, 0
        log_ = self._SyncObj__raftLog
        first = log_[0][1]
        last = log_[-1][1]

        def term_at(index: int) -> int | None:
            if index is None or index < first or index > last:
                return None
            entry = log_[index - first]
            return int(entry[2])

        plan = plan_append(
            term_at,
            last,
            message["prevLogIdx"],
            message["prevLogTerm"],
            message.get("entries", []),
            self._verified_index,
        )
        if plan is None:
            return message
        self.append_decisions[plan.decision] = self.append_decisions.get(plan.decision, 0) + 1
        rewritten = dict(message)
        rewritten["prevLogIdx"], rewritten["prevLogTerm"] = plan.prev_index, plan.prev_term
        rewritten["entries"] = plan.entries
        new_last = plan.entries[-1][1] if plan.entries else last
        self._verified_index = max(plan.verified_index, min(self._verified_index, new_last))
        rewritten["commit_index"] = min(message["commit_index"], self._verified_index)
        self._suppress_truncation = plan.suppress_truncation
        return rewritten

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> Any:  # noqa: N802
        # PySyncObj rolls back the membership entries of the tail it is about to cut;
        # when the cut is suppressed (every entry matched) the tail and its membership
        # changes stay, so must their effect.
        if reverse and self._suppress_truncation:
            return None
        return super()._SyncObj__doChangeCluster(request, reverse)

    def _SyncObj__deleteEntriesFrom(self, fromIDx: int) -> None:  # noqa: N802,N803
        if self._suppress_truncation:
            self.suppressed_truncations += 1
            return
        if fromIDx <= self.raftCommitIndex:
            self.truncations_below_commit += 1
            log.critical(
                "truncating committed entries",
                extra={
                    "event": "committed_entries_truncated",
                    "fields": {"from_index": fromIDx, "commit_index": self.raftCommitIndex},
                },
            )
        super()._SyncObj__deleteEntriesFrom(fromIDx)

    # ------------------------------------------------------------ snapshots

    def _prepare_snapshot(self, raft_data: Any) -> Callable[[str], None]:
        # Tick thread: only the freeze happens here; the returned writer runs on the
        # snapshot thread.
        last, prev, cluster = raft_data
        state = self._snapshot_fn()
        # A learner has no node of its own (None) in PySyncObj's cluster set.
        members = sorted(n.id for n in cluster if n is not None)

        def write(tmp_path: str) -> None:
            write_snapshot(tmp_path, state, last, prev, members)

        return write

    def _deserialize_from(self, path: str) -> tuple[Any, Any, Any]:
        # The file is durable already: ours since compaction, an installed one since
        # _DurableSerializer. At start it was loaded (and checked) by open_data_files.
        loaded, self._preloaded = self._preloaded, None
        state, last, prev, cluster = loaded if loaded is not None else load_snapshot(path)
        self._restore_fn(state, int(last[1]))
        return tuple(last), tuple(prev), {TCPNode(n) for n in cluster}

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802,N803 - PySyncObj's name
        # Replaces PySyncObj's loader, which swallowed every error (the node then ran on
        # an empty state) and cleared the whole journal unless it started exactly at the
        # snapshot's prev: after a crash between the snapshot rename and the journal
        # rewrite that dropped every acknowledged entry beyond the snapshot.
        try:
            _, last, prev, cluster = self._SyncObj__serializer.deserialize()
        except Exception as exc:  # noqa: BLE001 - whatever it is, this state cannot be served
            fail_stop(f"loading the snapshot {self._SyncObj__conf.fullDumpFile}", exc)
        journal = self._rdb_journal
        last_index, last_term = int(last[1]), int(last[2])
        if clearJournal or not journal_holds(journal, last_index, last_term):
            # An install, or a journal behind (or diverged from) the snapshot: the
            # snapshot's two entries become the whole journal, in one durable step.
            journal.reset([tuple(prev), tuple(last)])
        self._SyncObj__raftLastApplied = last_index
        # The snapshot holds committed entries only.
        before = int(getattr(self, "_SyncObj__raftCommitIndex"))  # noqa: B009
        commit = min(max(before, last_index), journal.last_index)
        if commit != before:
            self._SyncObj__raftCommitIndex = commit
            journal.setRaftCommitIndex(commit)
        if self._SyncObj__conf.dynamicMembershipChange:
            self._SyncObj__updateClusterConfiguration([n for n in cluster if n != self.selfNode])
        self._SyncObj__onSetCodeVersion(0)

    # ------------------------------------------------------------ status

    def quorum_age(self) -> float:
        """Seconds since this node last knew a majority was with it: for a leader, since
        the majority-th freshest follower answered; for a follower, since its leader
        last reached it. Cheap, safe from any thread, and it keeps counting while the
        process is stopped (CLOCK_MONOTONIC), so a node waking from SIGSTOP sees it."""
        now = time.monotonic()
        if self._SyncObj__raftState != _LEADER:
            # Also during an election (no leader known): the grace period runs from the
            # last contact with the old leader, not from the election's start.
            return now - self.last_leader_contact
        others = self._other_nodes()
        responses = self._SyncObj__lastResponseTime
        times = sorted((responses.get(n, 0.0) for n in others), reverse=True)
        needed = (len(others) + 1) // 2  # followers needed with the leader for a majority
        return 0.0 if needed == 0 else now - times[needed - 1] if len(times) >= needed else float("inf")

    @property
    def leader_commit_index(self) -> int | None:
        """The leader's commit index: our own on the leader, else as the leader of the
        current term last sent it (None before one did). A learner may promote only once
        it holds that much (``promotion_ready``). Any thread."""
        if self._SyncObj__raftState == _LEADER:
            return int(self.raftCommitIndex)
        return self._leader_commit_sent

    def leadership(self, quorum_window: float, others: list[Any] | None = None) -> Leadership:
        """Role, leader and quorum, without the rest of ``status`` (which sorts and
        counts). Safe from any thread."""
        role = "learner" if self.is_learner else ROLE_NAMES.get(self._SyncObj__raftState, "follower")
        leader = self._SyncObj__raftLeader
        now = time.monotonic()
        if role == "leader":
            others = self._other_nodes() if others is None else others
            responses = self._SyncObj__lastResponseTime
            fresh = sum(1 for n in others if responses.get(n, 0.0) > now - quorum_window)
            quorum = fresh + 1 > (len(others) + 1) / 2
        else:
            quorum = leader is not None and now - self.last_leader_contact < quorum_window
        return Leadership(role, None if leader is None else str(leader.id), quorum)

    def read_position(self, quorum_window: float) -> ReadPosition:
        """Applied and commit index and quorum, without the rest of ``status`` (which
        sorts, counts and scans the tick history): asked by every serializable read.
        Safe from any thread."""
        quorum = self.leadership(quorum_window).quorum
        return ReadPosition(int(self.raftLastApplied), int(self.raftCommitIndex), quorum)

    def status(self, quorum_window: float) -> RaftStatus:
        """A consistent-enough view for /v1/status. Safe from any thread."""
        others = self._other_nodes()
        seen = self.leadership(quorum_window, others)
        journal = self._rdb_journal
        serializer = self._SyncObj__serializer
        return RaftStatus(
            role=seen.role,
            term=int(self.raftCurrentTerm),
            leader=seen.leader,
            commit_index=int(self.raftCommitIndex),
            leader_commit_index=self.leader_commit_index,
            applied_index=int(self.raftLastApplied),
            last_index=journal.last_index,
            quorum=seen.quorum,
            members=sorted(([self.selfNode.id] if self.selfNode is not None else []) + [n.id for n in others]),
            connected=sorted(n.id for n in others if self.isNodeConnected(n)),
            journal_syncs=journal.sync_count,
            journal_bytes=journal.size_bytes,
            messages_held=self._SyncObj__transport.sent_held,
            messages_sent_after_merge=self._SyncObj__transport.sent_merged,
            truncations_below_commit=self.truncations_below_commit,
            suppressed_truncations=self.suppressed_truncations,
            snapshots_written=getattr(serializer, "snapshots_written", 0),
            snapshot_seconds_last=getattr(serializer, "last_seconds", 0.0),
            snapshot_seconds_max=getattr(serializer, "max_seconds", 0.0),
            tick_stall_max_10s=self.tick_stall_max(),
        )

    def _other_nodes(self) -> list[Any]:
        # The tick thread may swap this set during a membership change; copy, retrying.
        for _ in range(10):
            try:
                return list(self._SyncObj__otherNodes)
            except RuntimeError:
                continue
        return []

    def add_member(self, address: str, callback: Callable[[Any, int], None]) -> None:
        self.addNodeToCluster(address, callback=callback)

    def remove_member(self, address: str, callback: Callable[[Any, int], None]) -> None:
        self.removeNodeFromCluster(address, callback=callback)
