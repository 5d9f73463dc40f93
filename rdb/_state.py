"""The pure, deterministic state machine of the replicated store.

``StateMachine.apply(command, index)`` is the only writer. It does no I/O, reads no clock
and no randomness, and never raises: a malformed command yields an ``invalid`` result
value, because an exception inside a PySyncObj replicated method wedges the cluster.

Threading: the store calls ``apply`` on PySyncObj's tick thread and the readers on the
asyncio loop; the caller serialises them with one lock (see ``rdb._store``). The state
machine itself holds no lock.

Commands are msgpack maps with a format version ``v`` (see ``rdb._commands``). A
proposer stamps a request id ``rid`` and a digest ``dg`` of the rest of the command. A
command whose ``rid`` was already applied changes nothing: with the same digest (a
retry) it answers with the original result, so a retried write is applied once; with
another digest it answers ``idempotency_conflict``. Entries kept without a digest (older
commands) answer with the original result.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import io
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from sortedcontainers import SortedList

from rdb._errors import Compacted

#: Where a deduplication entry keeps the digest of the command that made it.
_DIGEST = "_request_digest"
#: The retry window of request ids (README, "Exactly-once writes"): the newest
#: 320,000 ids, 64 s at 5,000 writes/s, as long as their results fit in 48 MiB
#: (id plus packed result: about 115 bytes for a put, so the count decides unless the
#: results are large, such as txns with many responses).
DEDUP_LIMIT = 320_000
DEDUP_BYTES = 48 * 1024 * 1024

COMMAND_VERSION = 1
SNAPSHOT_FORMAT = 1

#: A value's size is its stored form: its msgpack encoding, on every path (put, txn, restore).
MAX_VALUE_BYTES = 1024 * 1024
#: Containers (arrays, maps) nested in one value, at most: deep enough for any config, and
#: far from the depth at which encoding JSON or msgpack recursively gives up.
MAX_VALUE_DEPTH = 100

Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's committed entry, with etcd-like revision bookkeeping."""

    key: str
    value: Any
    create_revision: int
    mod_revision: int
    version: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "create_revision": self.create_revision,
            "mod_revision": self.mod_revision,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One change in the history: ``kv`` is the entry after a put, the entry removed by
    a delete."""

    revision: int
    type: str  # "put" | "delete"
    kv: KeyValue
    prev_kv: KeyValue | None
    size: int  # approximate bytes, for the history's byte cap

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "type": self.type,
            "kv": self.kv.to_dict(),
            "prev_kv": None if self.prev_kv is None else self.prev_kv.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Reference:
    """A referential rule the state machine enforces, for any key space layout.

    A map value stored under ``child_prefix`` whose ``field`` is a string ``x`` requires
    the key ``parent_prefix + x`` to exist; that parent cannot be deleted while any
    child refers to it. Violations are rejected whole (a txn never half-applies).
    """

    child_prefix: str
    field: str
    parent_prefix: str

    def parent_of(self, key: str, value: Any) -> str | None:
        if not key.startswith(self.child_prefix) or not isinstance(value, dict):
            return None
        target = value.get(self.field)
        return self.parent_prefix + target if isinstance(target, str) and target else None


class _Invalid(Exception):
    """Internal: a command failed validation inside apply. Never escapes ``apply``."""


_GONE = object()
_COMPARE_TARGETS = ("mod_revision", "create_revision", "version", "value")
_COMPARE_RESULTS = ("==", "!=", "<", ">")


class StateMachine:
    """The revisioned key space: global revision, per-key create/mod revision and version,
    a bounded change history for watch, and a bounded request-id table for retries."""

    def __init__(
        self,
        *,
        history_limit: int = 10_000,
        history_bytes: int = 64 * 1024 * 1024,
        dedup_limit: int = DEDUP_LIMIT,
        dedup_bytes: int = DEDUP_BYTES,
        references: Iterable[Reference] = (),
    ) -> None:
        self._references = tuple(references)
        #: Keys under none of these never refer to anything (most writes: no check).
        self._child_prefixes = tuple(r.child_prefix for r in self._references)
        self.restores_applied = 0  # local counter: a restore is a load event for the node
        self._history_limit = history_limit
        self._history_bytes_limit = history_bytes
        self._dedup_limit = dedup_limit
        self._dedup_bytes_limit = dedup_bytes
        self._reset()

    def _reset(self) -> None:
        self._data: dict[str, KeyValue] = {}
        # Sorted, for prefix listing with paging. A SortedList (a list of bounded sublists)
        # inserts and removes in O(log n): a plain list with insort moves half the keys.
        self._keys: SortedList = SortedList()
        self._revision = 0
        self._applied_index = 0
        self._history: list[Event] = []
        self._history_start = 0  # index of the oldest live event in _history
        self._history_bytes = 0
        self._compacted = 0  # events with revision <= this are gone
        # request id -> msgpack of the result a retry gets (with the digest): packed,
        # it takes about half the memory of the dict, at 300,000 ids and more.
        self._dedup: OrderedDict[str, bytes] = OrderedDict()
        self._dedup_bytes = 0  # sum of len(id) + len(packed result)
        self._children: dict[str, set[str]] = {}  # parent key -> child keys referring to it
        # A restore being uploaded: raw snapshot chunks (older logs) or checked rows.
        self._staging: tuple[str, list[bytes]] | _RowStaging | None = None

    # ------------------------------------------------------------------ reads

    @property
    def revision(self) -> int:
        """The store revision: bumped once per applied command that changed a key."""
        return self._revision

    @property
    def applied_index(self) -> int:
        """The Raft log index of the last applied command (0 before any)."""
        return self._applied_index

    @property
    def compacted_revision(self) -> int:
        """Watches must start after this revision."""
        return self._compacted

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> KeyValue | None:
        return self._data.get(key)

    def frozen(self) -> StateMachine:
        """A read-only copy of the key space at this revision, sharing the immutable
        entries (O(keys) pointer copies): project from it without holding the apply lock.
        Writing to it is a bug; it has no request ids and no staged restore."""
        copy = StateMachine.__new__(StateMachine)
        copy._references, copy._child_prefixes = self._references, self._child_prefixes
        copy.restores_applied = self.restores_applied
        copy._history_limit, copy._history_bytes_limit, copy._dedup_limit = 0, 0, 0
        copy._dedup_bytes_limit, copy._dedup_bytes = 0, 0
        copy._data = dict(self._data)
        copy._keys = self._keys.copy()
        copy._revision = self._revision
        copy._applied_index = self._applied_index
        copy._history = self._history[self._history_start :]
        copy._history_start = 0
        copy._history_bytes = self._history_bytes
        copy._compacted = self._compacted
        copy._dedup = OrderedDict()
        copy._children = {parent: set(kids) for parent, kids in self._children.items()}
        copy._staging = None
        return copy

    def children(self, parent_key: str) -> frozenset[str]:
        """Keys whose value refers to ``parent_key`` through a ``Reference``."""
        return frozenset(self._children.get(parent_key, ()))

    def range(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> tuple[list[KeyValue], bool]:
        """Entries whose key starts with ``prefix``, in key order, after ``start_after``.

        Returns ``(entries, more)``; ``more`` is True when ``limit`` cut the list.
        """
        if start_after is not None and start_after >= prefix:
            i = self._keys.bisect_right(start_after)
        else:
            i = self._keys.bisect_left(prefix)
        out: list[KeyValue] = []
        for key in self._keys.islice(i):
            if not key.startswith(prefix):
                break
            if limit is not None and len(out) >= limit:
                return out, True
            out.append(self._data[key])
        return out, False

    def events_since(self, from_revision: int, prefix: str = "") -> list[Event]:
        """Retained events with ``revision >= from_revision`` whose key has ``prefix``.

        Raises ``Compacted`` when history no longer reaches ``from_revision``.
        """
        if from_revision <= self._compacted and from_revision <= self._revision:
            raise Compacted(from_revision, self._compacted)
        hist = self._history
        i = bisect.bisect_left(hist, from_revision, lo=self._history_start, key=lambda e: e.revision)
        return [e for e in hist[i:] if e.kv.key.startswith(prefix)]

    # ----------------------------------------------------------------- writes

    def apply(self, command: bytes, index: int) -> Result:
        """Apply one committed command at Raft log ``index``. Never raises: every outcome
        is a result value (``ok``, ``conflict``, ``not_found``, ``constraint``,
        ``idempotency_conflict`` or ``invalid``). A ``batch`` applies its commands in
        order and answers ``{"status": "ok", "revision", "results": [one per command]}``."""
        return self._apply_one(command, index, batch_allowed=True)

    def _apply_one(self, command: bytes, index: int, *, batch_allowed: bool) -> Result:
        if index > self._applied_index:
            self._applied_index = index
        try:
            cmd = msgpack.unpackb(command, raw=False, strict_map_key=False)
        except Exception as exc:  # noqa: BLE001 - any decode error is a value, never a raise
            return {"status": "invalid", "message": f"undecodable command: {exc}"}
        if not isinstance(cmd, dict):
            return {"status": "invalid", "message": "command is not a map"}
        if cmd.get("v") != COMMAND_VERSION:
            return {"status": "invalid", "message": f"unsupported command version {cmd.get('v')!r}"}
        if cmd.get("kind") == "batch":
            return self._batch_cmd(cmd, index) if batch_allowed else {"status": "invalid", "message": "nested batch"}
        rid = cmd.get("rid")
        if isinstance(rid, str) and rid in self._dedup:
            cached = dict(msgpack.unpackb(self._dedup[rid], raw=False, strict_map_key=False))
            digest, incoming = cached.pop(_DIGEST, None), cmd.get("dg")
            if isinstance(digest, str) and isinstance(incoming, str) and digest != incoming:
                # The same request id with a different request: answering with the first
                # request's result would tell the client this one was applied.
                return {
                    "status": "idempotency_conflict",
                    "message": f"request id {rid!r} was already used for a different request",
                    "revision": self._revision,
                }
            cached["duplicate"] = True
            return cached
        try:
            result = self._dispatch(cmd, index)
        except _Invalid as exc:
            result = {"status": "invalid", "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug must not wedge the cluster
            result = {"status": "invalid", "message": f"internal error applying command: {exc!r}"}
        if isinstance(rid, str):
            kept = _for_dedup(result)
            digest = cmd.get("dg")
            self._remember(rid, {**kept, _DIGEST: digest} if isinstance(digest, str) else kept)
        return result

    def _batch_cmd(self, cmd: Mapping[str, Any], index: int) -> Result:
        parts = cmd.get("cmds")
        if not isinstance(parts, list) or not all(isinstance(p, bytes) for p in parts):
            return {"status": "invalid", "message": "a batch holds a list of encoded commands"}
        results = [self._apply_one(part, index, batch_allowed=False) for part in parts]
        return {"status": "ok", "revision": self._revision, "results": results}

    def _remember(self, rid: str, result: Result) -> None:
        packed: bytes = msgpack.packb(result, use_bin_type=True)
        old = self._dedup.pop(rid, None)
        if old is not None:
            self._dedup_bytes -= len(rid) + len(old)
        self._dedup[rid] = packed
        self._dedup_bytes += len(rid) + len(packed)
        # Oldest first, by count and by bytes (large txn results must not hold memory).
        while len(self._dedup) > self._dedup_limit or (
            self._dedup_bytes > self._dedup_bytes_limit and len(self._dedup) > 1
        ):
            gone, value = self._dedup.popitem(last=False)
            self._dedup_bytes -= len(gone) + len(value)

    @property
    def dedup_size(self) -> tuple[int, int]:
        """(request ids remembered, their bytes: id plus packed result)."""
        return len(self._dedup), self._dedup_bytes

    def _dispatch(self, cmd: Mapping[str, Any], index: int) -> Result:
        kind = cmd.get("kind")
        if kind == "barrier":
            return {"status": "ok", "revision": self._revision, "index": index}
        if kind == "put":
            return self._put_cmd(cmd)
        if kind == "delete":
            return self._delete_cmd(cmd)
        if kind == "txn":
            return self._txn_cmd(cmd)
        if kind in ("restore_begin", "restore_chunk", "restore_commit"):
            rows = cmd.get("rows") is not None if kind == "restore_begin" else isinstance(self._staging, _RowStaging)
            if rows:
                return self._restore_rows_cmd(kind, cmd)
            return self._restore_cmd(kind, cmd)
        if kind == "restore_rows":
            return self._restore_rows_cmd(kind, cmd)
        raise _Invalid(f"unknown command kind {kind!r}")

    def _restore_cmd(self, kind: str, cmd: Mapping[str, Any]) -> Result:
        """A restore arrives in chunks (log entries stay small), then commits atomically."""
        upload = cmd.get("upload")
        if not isinstance(upload, str) or not upload:
            raise _Invalid("restore commands need an upload id")
        if kind == "restore_begin":
            self._staging = (upload, [])
            return {"status": "ok", "revision": self._revision}
        if not isinstance(self._staging, tuple) or self._staging[0] != upload:
            raise _Invalid(f"no restore upload {upload!r} in progress")
        chunks = self._staging[1]
        if kind == "restore_chunk":
            data = cmd.get("data")
            if not isinstance(data, bytes) or cmd.get("seq") != len(chunks):
                raise _Invalid(f"restore chunk out of order: expected seq {len(chunks)}")
            chunks.append(data)
            return {"status": "ok", "revision": self._revision}
        self._staging = None
        # Commands from proposers that check restores carry "checked"; entries already
        # in a log from before keep the meaning they had when they were committed.
        checked = cmd.get("checked") is True
        incoming = StateMachine(references=self._references)
        try:
            incoming.restore(b"".join(chunks), strict=checked)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        # Revisions never go backwards: the restored state is one new revision, and watch
        # history restarts there (older revisions answer 410, so watchers re-list).
        revision = max(self._revision, incoming._revision) + 1
        # Keys under keep_prefix (say, this cluster's member registry) survive a restore.
        keep = cmd.get("keep_prefix")
        keep_prefix = keep if isinstance(keep, str) and keep else None
        data = {
            k: KeyValue(k, kv.value, min(kv.create_revision, revision), min(kv.mod_revision, revision), kv.version)
            for k, kv in incoming._data.items()
            if not (keep_prefix and k.startswith(keep_prefix))
        }
        data.update({k: kv for k, kv in self._data.items() if keep_prefix and k.startswith(keep_prefix)})
        dangling = _dangling_reference(self._references, data) if checked else None
        if dangling is not None:
            raise _Invalid(f"the snapshot breaks a reference: {dangling}")
        # Everything is built and checked: only now is the current state replaced, so a
        # rejected restore changes nothing.
        dedup, dedup_bytes, applied = self._dedup, self._dedup_bytes, self._applied_index
        self._reset()
        self._applied_index = applied  # this entry's index, set by apply() before dispatch
        self._data = data
        self._keys = SortedList(self._data)
        self._dedup, self._dedup_bytes = dedup, dedup_bytes
        self._revision = revision
        self._compacted = revision
        for kv in self._data.values():
            self._index_references(kv.key, None, kv.value)
        self.restores_applied += 1
        return {"status": "ok", "revision": revision, "restored_keys": len(self._data)}

    def _restore_rows_cmd(self, kind: str, cmd: Mapping[str, Any]) -> Result:
        """A restore in rows: ``restore_begin`` (with ``rows`` and ``parts``, the counts,
        and the snapshot's ``revision``), ``parts`` entries ``restore_rows`` of key-sorted
        rows, numbered by ``seq``, each checked as it applies (so no entry costs the tick
        thread more than its own rows) in whatever order they arrive (a proposer keeps
        several in flight), then ``restore_commit``, which checks that every part arrived
        and the parts follow each other in key order, and swaps the staged state in
        without touching every key again. Rejected whole, like the chunked form, if any
        part is bad."""
        upload = cmd.get("upload")
        if not isinstance(upload, str) or not upload:
            raise _Invalid("restore commands need an upload id")
        if kind == "restore_begin":
            total, parts, revision = cmd.get("rows"), cmd.get("parts"), cmd.get("revision")
            numbers = (total, parts, revision)
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
                raise _Invalid("restore_begin: rows, parts and revision must be integers")
            if not (0 <= revision <= MAX_REVISION and 0 <= parts <= total):  # type: ignore[operator]
                raise _Invalid("restore_begin: rows, parts or revision out of range")
            self._staging = _RowStaging(upload, revision, total, parts)  # type: ignore[arg-type]
            return {"status": "ok", "revision": self._revision}
        staging = self._staging
        if not isinstance(staging, _RowStaging) or staging.upload != upload:
            raise _Invalid(f"no restore upload {upload!r} in progress")
        if kind == "restore_rows":
            rows, seq = cmd.get("rows"), cmd.get("seq")
            if not isinstance(rows, list) or not rows or not isinstance(seq, int) or isinstance(seq, bool):
                raise _Invalid("restore rows need a seq and at least one row")
            try:
                staging.add(seq, rows, self._references)
            except ValueError as exc:
                self._staging = None  # a bad row rejects the whole upload
                raise _Invalid(str(exc)) from None
            return {"status": "ok", "revision": self._revision, "staged": len(staging.data)}
        if kind != "restore_commit":
            raise _Invalid(f"{kind} does not belong to a restore in rows")
        self._staging = None
        try:
            keys = staging.sorted_keys()
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        revision = max(self._revision, staging.revision) + 1
        data, children = staging.data, staging.children
        # Keys under keep_prefix (this cluster's member registry) survive a restore. Keys
        # with one prefix are one run of the sorted list: only that run is touched.
        keep = cmd.get("keep_prefix")
        if isinstance(keep, str) and keep:
            lo = bisect.bisect_left(keys, keep)
            hi = lo
            while hi < len(keys) and keys[hi].startswith(keep):
                _unindex(self._references, children, keys[hi], data.pop(keys[hi]).value)
                hi += 1
            start = self._keys.bisect_left(keep)
            kept: list[str] = []
            for key in self._keys.islice(start):
                if not key.startswith(keep):
                    break
                kept.append(key)
                data[key] = self._data[key]
                _index(self._references, children, key, data[key].value)
            keys[lo:hi] = kept
        dangling = next(
            (f"{min(kids)} needs {parent}" for parent, kids in children.items() if parent not in data), None
        )
        if dangling is not None:
            raise _Invalid(f"the snapshot breaks a reference: {dangling}")
        dedup, dedup_bytes, applied = self._dedup, self._dedup_bytes, self._applied_index
        self._reset()
        self._applied_index = applied
        self._data, self._keys, self._children = data, SortedList(keys), children  # sorted: O(n)
        self._dedup, self._dedup_bytes = dedup, dedup_bytes
        self._revision = revision
        self._compacted = revision
        self.restores_applied += 1
        return {"status": "ok", "revision": revision, "restored_keys": len(data)}

    def _put_cmd(self, cmd: Mapping[str, Any]) -> Result:
        key = _key(cmd.get("key"))
        prev = _optional_int(cmd.get("prev_revision"), "prev_revision")
        current = self._data.get(key)
        if prev is not None and (0 if current is None else current.mod_revision) != prev:
            return self._conflict(current)
        violation = self._check_references([("put", key, cmd.get("value"))])
        if violation is not None:
            return violation
        self._revision += 1
        kv = self._write(key, cmd.get("value"), self._revision)
        return {"status": "ok", "revision": self._revision, "version": kv.version}

    def _delete_cmd(self, cmd: Mapping[str, Any]) -> Result:
        key = _key(cmd.get("key"))
        prev = _optional_int(cmd.get("prev_revision"), "prev_revision")
        current = self._data.get(key)
        if prev is not None and (0 if current is None else current.mod_revision) != prev:
            return self._conflict(current)
        if current is None:
            return {"status": "not_found", "revision": self._revision}
        violation = self._check_references([("delete", key, None)])
        if violation is not None:
            return violation
        self._revision += 1
        self._remove(key, self._revision)
        return {"status": "ok", "revision": self._revision}

    def _conflict(self, current: KeyValue | None) -> Result:
        return {
            "status": "conflict",
            "revision": self._revision,
            "current": None if current is None else current.to_dict(),
        }

    def _txn_cmd(self, cmd: Mapping[str, Any]) -> Result:
        compares = _list(cmd.get("compare", []), "compare")
        success = _list(cmd.get("success", []), "success")
        failure = _list(cmd.get("failure", []), "failure")
        # Validate every branch before touching state, so a bad op never half-applies.
        for op in (*success, *failure):
            _validate_op(op)
        # Evaluate every compare (no short-circuit), so an invalid one anywhere rejects the txn.
        # Commands from proposers that compare JSON types say so; entries already in a log
        # from before keep the meaning they had when they were committed (True == 1).
        typed = cmd.get("typed_compare") is True
        succeeded = all([self._compare(c, typed) for c in compares])
        ops = success if succeeded else failure
        violation = self._check_references([(op["op"], op["key"], op.get("value")) for op in ops if op["op"] != "get"])
        if violation is not None:
            return violation
        writes = any(op["op"] in ("put", "delete") and (op["op"] == "put" or op["key"] in self._data) for op in ops)
        revision = self._revision + 1 if writes else self._revision
        responses: list[dict[str, Any]] = []
        for op in ops:
            key = op["key"]
            if op["op"] == "get":
                kv = self._data.get(key)
                responses.append({"op": "get", "kv": None if kv is None else kv.to_dict()})
            elif op["op"] == "put":
                self._write(key, op.get("value"), revision)
                responses.append({"op": "put", "revision": revision})
            else:
                existed = key in self._data
                if existed:
                    self._remove(key, revision)
                responses.append({"op": "delete", "deleted": existed})
        self._revision = revision
        return {"status": "ok", "succeeded": succeeded, "revision": revision, "responses": responses}

    def _compare(self, cmp: Any, typed: bool = False) -> bool:
        if not isinstance(cmp, dict):
            raise _Invalid("a compare must be a map")
        key = _key(cmp.get("key"))
        target = cmp.get("target", "mod_revision")
        result = cmp.get("result", "==")
        if target not in _COMPARE_TARGETS:
            raise _Invalid(f"compare target must be one of {_COMPARE_TARGETS}")
        if result not in _COMPARE_RESULTS:
            raise _Invalid(f"compare result must be one of {_COMPARE_RESULTS}")
        kv = self._data.get(key)
        actual: Any
        if target == "value":
            actual = None if kv is None else kv.value
        else:
            actual = 0 if kv is None else getattr(kv, target)
        expected = cmp.get("value")
        if typed and target == "value":
            return _json_compare(actual, expected, result)
        if result == "==":
            return bool(actual == expected)
        if result == "!=":
            return bool(actual != expected)
        try:
            return bool(actual < expected) if result == "<" else bool(actual > expected)
        except TypeError:
            return False

    def _check_references(self, writes: list[tuple[str, str, Any]]) -> Result | None:
        """Simulate ``writes`` in order; the first referential violation, or None."""
        if not self._references:
            return None
        if all(kind == "put" and not key.startswith(self._child_prefixes) for kind, key, _ in writes):
            return None  # nothing they write refers to anything, and a put removes no parent
        overlay: dict[str, Any] = {}  # key -> value, or _GONE
        added: dict[str, set[str]] = {}
        removed: dict[str, set[str]] = {}

        def exists(key: str) -> bool:
            if key in overlay:
                return overlay[key] is not _GONE
            return key in self._data

        def current(key: str) -> Any:
            if key in overlay:
                return None if overlay[key] is _GONE else overlay[key]
            kv = self._data.get(key)
            return None if kv is None else kv.value

        def child_count(parent: str) -> int:
            base = self._children.get(parent, set())
            return len((base | added.get(parent, set())) - removed.get(parent, set()))

        for kind, key, value in writes:
            old = current(key) if exists(key) else None
            for ref in self._references:
                old_parent = ref.parent_of(key, old)
                if old_parent is not None:
                    removed.setdefault(old_parent, set()).add(key)
                    added.get(old_parent, set()).discard(key)
            if kind == "put":
                for ref in self._references:
                    parent = ref.parent_of(key, value)
                    if parent is None:
                        continue
                    if not exists(parent):
                        return {
                            "status": "constraint",
                            "code": "missing_reference",
                            "message": f"{key} refers to {parent}, which does not exist",
                            "revision": self._revision,
                            "key": key,
                            "parent": parent,
                        }
                    added.setdefault(parent, set()).add(key)
                    removed.get(parent, set()).discard(key)
                overlay[key] = value
            else:
                if exists(key) and child_count(key) > 0:
                    referrers = sorted(
                        (self._children.get(key, set()) | added.get(key, set())) - removed.get(key, set())
                    )
                    return {
                        "status": "constraint",
                        "code": "still_referenced",
                        "message": f"{key} is still referred to by {len(referrers)} key(s), e.g. {referrers[0]}",
                        "revision": self._revision,
                        "key": key,
                        "referrers": referrers[:10],
                    }
                overlay[key] = _GONE
        return None

    def _index_references(self, key: str, old: Any, new: Any) -> None:
        for ref in self._references:
            old_parent = ref.parent_of(key, old)
            new_parent = ref.parent_of(key, new)
            if old_parent == new_parent:
                continue
            if old_parent is not None:
                kids = self._children.get(old_parent)
                if kids is not None:
                    kids.discard(key)
                    if not kids:
                        del self._children[old_parent]
            if new_parent is not None:
                self._children.setdefault(new_parent, set()).add(key)

    def _write(self, key: str, value: Any, revision: int) -> KeyValue:
        prev = self._data.get(key)
        if key.startswith(self._child_prefixes):
            self._index_references(key, None if prev is None else prev.value, value)
        if prev is None:
            kv = KeyValue(key, value, revision, revision, 1)
            self._keys.add(key)
        else:
            kv = KeyValue(key, value, prev.create_revision, revision, prev.version + 1)
        self._data[key] = kv
        self._record(Event(revision, "put", kv, prev, _approx_size(key, value)))
        return kv

    def _remove(self, key: str, revision: int) -> None:
        prev = self._data.pop(key)
        if key.startswith(self._child_prefixes):
            self._index_references(key, prev.value, None)
        self._keys.remove(key)
        gone = KeyValue(key, None, prev.create_revision, revision, 0)
        self._record(Event(revision, "delete", gone, prev, _approx_size(key, None)))

    def _record(self, event: Event) -> None:
        self._history.append(event)
        self._history_bytes += event.size
        hist = self._history
        while (len(hist) - self._history_start > self._history_limit) or (
            self._history_bytes > self._history_bytes_limit and len(hist) - self._history_start > 1
        ):
            old = hist[self._history_start]
            self._history_start += 1
            self._history_bytes -= old.size
            self._compacted = old.revision
        # Trim the dead prefix now and then; amortised O(1) per event.
        if self._history_start > 1024 and self._history_start * 2 > len(hist):
            del hist[: self._history_start]
            self._history_start = 0

    # --------------------------------------------------------- snapshot/restore

    def snapshot(self) -> bytes:
        """Serialise the whole state (keys, history, request ids) to bytes."""
        return b"".join(self.snapshot_source().chunks())

    def snapshot_source(self) -> SnapshotSource:
        """What ``snapshot()`` would encode, frozen at this revision: O(keys) pointer
        copies (about 75 ms for a million keys), not an encoding. Take it under the apply
        lock; encode it with ``chunks()`` on any thread, without the lock, while later
        commands apply (entries are immutable; the containers are copies)."""
        staging: Any = None
        if isinstance(self._staging, _RowStaging):
            staging = self._staging.frozen_doc()
        elif self._staging is not None:
            staging = [self._staging[0], list(self._staging[1])]
        return SnapshotSource(
            revision=self._revision,
            applied_index=self._applied_index,
            compacted=self._compacted,
            kvs=list(self._data.values()),
            history=self._history[self._history_start :],
            dedup=list(self._dedup.items()),
            staging=staging,
        )

    def restore(self, data: bytes, *, strict: bool = True) -> None:
        """Replace the whole state with a snapshot. Raises ``ValueError`` if malformed,
        leaving the current state untouched.

        ``strict`` (uploads, restore commands) also checks every row: key limits,
        integer revisions in range, no duplicates. A node loading its *own* Raft snapshot
        passes False: what it once accepted must never stop it from starting."""
        try:
            doc = _unpack_document(data)
            if doc.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported snapshot format {doc.get('format')!r}")
            numbers = (doc["revision"], doc["applied_index"], doc["compacted"])
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
                raise ValueError("revision, compacted and applied_index must be integers")
            revision, applied, compacted = numbers
            if not 0 <= compacted <= revision <= MAX_REVISION or applied < 0:
                raise ValueError("revision, compacted or applied_index out of range")
            kvs = {}
            for i, row in enumerate(doc["kvs"]):
                kv = _checked_row(row, revision) if strict else KeyValue(row[0], row[1], row[2], row[3], row[4])
                if strict and kv.key in kvs:
                    raise ValueError(f"key {kv.key!r} appears twice")
                kvs[kv.key] = kv
                if i % _FREEZE_EVERY == _FREEZE_EVERY - 1:
                    gc.freeze()
            # Sorted gently first: SortedList's own sort of unsorted keys is one long C call.
            keys = SortedList(_sorted_gently(list(kvs)))
            history = [
                Event(
                    r[0],
                    r[1],
                    KeyValue(*r[2]),
                    None if r[3] is None else KeyValue(*r[3]),
                    _approx_size(r[2][0], r[2][1]),
                )
                for r in doc["history"]
            ]
            # Older snapshots hold the results as maps.
            dedup = OrderedDict(
                (rid, res if isinstance(res, bytes) else msgpack.packb(dict(res), use_bin_type=True))
                for rid, res in doc["dedup"]
            )
            if not all(isinstance(rid, str) for rid in dedup):
                raise ValueError("request ids must be strings")
            staging_doc = doc.get("staging")
            staging: tuple[str, list[bytes]] | _RowStaging | None
            if isinstance(staging_doc, dict):
                staging = _RowStaging.from_doc(staging_doc, self._references)
            else:
                staging = None if staging_doc is None else (str(staging_doc[0]), [bytes(c) for c in staging_doc[1]])
        except (ValueError, KeyError, TypeError, IndexError, OverflowError, msgpack.UnpackException) as exc:
            raise ValueError(f"malformed snapshot: {exc}") from exc
        self._reset()
        self._data = kvs
        self._keys = keys
        self._history = history
        self._history_bytes = sum(e.size for e in history)
        self._dedup = dedup
        self._dedup_bytes = sum(len(rid) + len(res) for rid, res in dedup.items())
        self._revision, self._applied_index, self._compacted = revision, applied, compacted
        self._staging = staging
        for kv in kvs.values():
            self._index_references(kv.key, None, kv.value)

    def items(self) -> Iterable[KeyValue]:
        return self._data.values()

    @property
    def references(self) -> tuple[Reference, ...]:
        return self._references

    def dangling_reference(self) -> str | None:
        """The first stored child whose parent is missing (``child needs parent``), or None."""
        return _dangling_reference(self._references, self._data)


class _RowStaging:
    """A restore in rows being uploaded: checked entries of its parts, in the order they
    arrived, and their reference index (see ``StateMachine._restore_rows_cmd``)."""

    __slots__ = ("children", "data", "part_keys", "parts", "revision", "total", "upload")

    def __init__(self, upload: str, revision: int, total: int, parts: int) -> None:
        self.upload, self.revision, self.total, self.parts = upload, revision, total, parts
        self.data: dict[str, KeyValue] = {}
        self.part_keys: dict[int, list[str]] = {}  # seq -> its keys, sorted
        self.children: dict[str, set[str]] = {}

    def add(self, seq: int, rows: list[Any], references: tuple[Reference, ...]) -> None:
        """Check and stage part ``seq``. Raises ``ValueError`` (nothing staged from it)
        for a bad row, keys out of order or repeated, a part out of range or twice, or
        more rows than announced."""
        if not 0 <= seq < self.parts or seq in self.part_keys:
            raise ValueError(f"restore part {seq} is out of range or arrived twice")
        if len(self.data) + len(rows) > self.total:
            raise ValueError(f"restore carries more than the {self.total} rows announced")
        last: str | None = None
        checked = []
        for row in rows:
            kv = _checked_row(row, self.revision)
            if (last is not None and kv.key <= last) or kv.key in self.data:
                raise ValueError(f"restore rows out of key order (or repeated) at {kv.key[:80]!r}")
            last = kv.key
            checked.append(kv)
        for kv in checked:
            self.data[kv.key] = kv
            if references:
                _index(references, self.children, kv.key, kv.value)
        self.part_keys[seq] = [kv.key for kv in checked]

    def sorted_keys(self) -> list[str]:
        """Every staged key in order; ``ValueError`` unless every part and row arrived
        and each part's keys follow the previous part's."""
        if len(self.part_keys) != self.parts or len(self.data) != self.total:
            raise ValueError(
                f"restore incomplete: {len(self.part_keys)} of {self.parts} parts, "
                f"{len(self.data)} of {self.total} rows arrived"
            )
        keys: list[str] = []
        for seq in range(self.parts):
            part = self.part_keys[seq]
            if keys and part[0] <= keys[-1]:
                raise ValueError(f"restore part {seq} is out of key order at {part[0][:80]!r}")
            keys += part
        return keys

    def frozen_doc(self) -> dict[str, Any]:
        """For a snapshot: a copy that later parts do not change (rows encoded later)."""
        done = sorted(self.part_keys)
        return {
            "upload": self.upload,
            "revision": self.revision,
            "total": self.total,
            "parts": self.parts,
            "done": [[seq, len(self.part_keys[seq])] for seq in done],
            "rows": [self.data[key] for seq in done for key in self.part_keys[seq]],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], references: tuple[Reference, ...]) -> _RowStaging:
        staging = cls(str(doc["upload"]), int(doc["revision"]), int(doc["total"]), int(doc["parts"]))
        rows = iter(doc["rows"])
        for seq, count in doc["done"]:
            keys = []
            for _ in range(int(count)):
                row = next(rows)
                kv = KeyValue(row[0], row[1], row[2], row[3], row[4])
                staging.data[kv.key] = kv
                keys.append(kv.key)
                if references:
                    _index(references, staging.children, kv.key, kv.value)
            staging.part_keys[int(seq)] = keys
        return staging


def _index(references: Iterable[Reference], children: dict[str, set[str]], key: str, value: Any) -> None:
    for ref in references:
        parent = ref.parent_of(key, value)
        if parent is not None:
            children.setdefault(parent, set()).add(key)


def _unindex(references: Iterable[Reference], children: dict[str, set[str]], key: str, value: Any) -> None:
    for ref in references:
        parent = ref.parent_of(key, value)
        kids = None if parent is None else children.get(parent)
        if kids is not None:
            kids.discard(key)
            if not kids:
                del children[parent]  # type: ignore[arg-type]


#: Rows per ``msgpack`` call while a snapshot is encoded: each call holds the GIL, so a
#: batch must stay short (2,000 rows of 256 B: about 1 ms) for the tick thread to run.
SNAPSHOT_BATCH_ROWS = 2_000


@dataclass(frozen=True, slots=True)
class SnapshotSource:
    """A frozen copy of the state a snapshot holds (see ``StateMachine.snapshot_source``).

    ``chunks()`` yields the encoding piece by piece; joined, the pieces are exactly the
    single ``msgpack`` document ``StateMachine.restore`` reads (the format is unchanged).
    Safe on any thread; it never touches the state machine it came from."""

    revision: int
    applied_index: int
    compacted: int
    kvs: list[KeyValue]
    history: list[Event]
    dedup: list[tuple[str, bytes]]  # request id, its packed result
    staging: Any

    def chunks(self, batch: int = SNAPSHOT_BATCH_ROWS) -> Iterator[bytes]:
        packer = msgpack.Packer(use_bin_type=True)
        yield packer.pack_map_header(8)
        for name, value in (
            ("format", SNAPSHOT_FORMAT),
            ("revision", self.revision),
            ("applied_index", self.applied_index),
            ("compacted", self.compacted),
        ):
            yield packer.pack(name) + packer.pack(value)
        yield packer.pack("kvs") + packer.pack_array_header(len(self.kvs))
        kvs = self.kvs
        for start in range(0, len(kvs), batch):
            yield b"".join([packer.pack(_kv_row(kv)) for kv in kvs[start : start + batch]])
        yield packer.pack("history") + packer.pack_array_header(len(self.history))
        hist = self.history
        for start in range(0, len(hist), batch):
            yield b"".join(
                [
                    packer.pack([e.revision, e.type, _kv_row(e.kv), None if e.prev_kv is None else _kv_row(e.prev_kv)])
                    for e in hist[start : start + batch]
                ]
            )
        yield packer.pack("dedup") + packer.pack_array_header(len(self.dedup))
        dedup = self.dedup
        for start in range(0, len(dedup), batch):
            yield b"".join([packer.pack(list(item)) for item in dedup[start : start + batch]])
        staging = self.staging
        if not isinstance(staging, dict):
            yield packer.pack("staging") + packer.pack(staging)
            return
        # A restore in rows under way: its rows in pieces too (one call for 250k staged
        # rows held the GIL, and stalled the tick thread, for most of a second).
        rows = staging["rows"]
        head = {k: v for k, v in staging.items() if k != "rows"}
        yield packer.pack("staging") + packer.pack_map_header(len(head) + 1)
        yield b"".join([packer.pack(k) + packer.pack(v) for k, v in head.items()])
        yield packer.pack("rows") + packer.pack_array_header(len(rows))
        for start in range(0, len(rows), batch):
            yield b"".join([packer.pack(_kv_row(kv)) for kv in rows[start : start + batch]])


#: Revisions stay far from msgpack's 64-bit limit, whatever a restored snapshot says.
MAX_REVISION = 2**53


#: Arrays of a snapshot document parsed one element per ``msgpack`` call.
_ROW_ARRAYS = ("kvs", "history", "dedup")
_SORT_BLOCK = 20_000
#: While a big snapshot is read, the objects made so far are frozen (``gc.freeze``)
#: every this many rows: a full collection scanning millions of young objects holds the
#: GIL for 0.3-0.6 s at a time. Frozen objects are still freed by reference counting.
_FREEZE_EVERY = 50_000


def _unpack_document(data: bytes) -> dict[Any, Any]:
    """``msgpack.unpackb(data)`` for a snapshot document (a map), with its row arrays
    read one row per call: one call for a million rows would hold the GIL for seconds,
    and the tick thread with it, even from a worker thread. Raises ``ValueError`` or
    ``msgpack.UnpackException`` (trailing bytes too, as ``unpackb`` does)."""
    unpacker = msgpack.Unpacker(
        io.BytesIO(data), raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1 << 20)
    )
    try:
        fields = unpacker.read_map_header()
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise ValueError("snapshot is not a map") from exc
    doc: dict[Any, Any] = {}
    for _ in range(fields):
        key = unpacker.unpack()
        if key in _ROW_ARRAYS:
            try:
                count = unpacker.read_array_header()
            except (msgpack.UnpackException, ValueError, TypeError) as exc:
                raise ValueError(f"{key} must be an array") from exc
            items = []
            for i in range(count):
                items.append(unpacker.unpack())
                if i % _FREEZE_EVERY == _FREEZE_EVERY - 1:
                    gc.freeze()
            doc[key] = items
        else:
            doc[key] = unpacker.unpack()
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return doc
    raise ValueError("trailing bytes after the snapshot")


def _sorted_gently(keys: list[str]) -> list[str]:
    """``sorted(keys)`` (distinct keys) without one long C call: ``list.sort`` holds the
    GIL throughout (about 1 s for a million keys). Already sorted input (a snapshot
    restored in key order) is only checked; otherwise blocks are sorted and merged."""
    if all(a < b for a, b in itertools.pairwise(keys)):
        return keys
    blocks = [sorted(keys[i : i + _SORT_BLOCK]) for i in range(0, len(keys), _SORT_BLOCK)]
    return list(heapq.merge(*blocks))


def too_deep(value: Any, limit: int = MAX_VALUE_DEPTH) -> bool:
    """True if ``value`` nests more than ``limit`` arrays/maps. Iterative: safe on any depth."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: same JSON type and value (``true`` is not ``1``, ``1`` is ``1.0``)."""
    kind = _json_kind(a)
    if kind != _json_kind(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if kind == "object":
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _json_compare(actual: Any, expected: Any, result: str) -> bool:
    """A value compare on JSON values: ``==``/``!=`` by type and value; ``<``/``>`` only
    between two numbers or two strings (anything else is false)."""
    if result == "==":
        return _json_equal(actual, expected)
    if result == "!=":
        return not _json_equal(actual, expected)
    kinds = (_json_kind(actual), _json_kind(expected))
    if kinds not in (("number", "number"), ("string", "string")):
        return False
    return bool(actual < expected) if result == "<" else bool(actual > expected)


def _checked_row(row: Any, revision: int) -> KeyValue:
    """One snapshot row as a KeyValue; ValueError unless it is a well-formed entry."""
    if not isinstance(row, list | tuple) or len(row) != 5:
        raise ValueError(f"a key row must have 5 fields: {str(row)[:80]}")
    key, value, create, mod, version = row
    if not isinstance(key, str) or not key or "\x00" in key or len(key.encode("utf-8", "replace")) > 1024:
        raise ValueError(f"bad key in snapshot: {str(key)[:80]!r}")
    numbers = (create, mod, version)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise ValueError(f"key {key!r}: revisions and version must be integers")
    if not (1 <= create <= mod <= max(revision, 1) and version >= 1):
        raise ValueError(f"key {key!r}: create/mod revision or version out of range")
    return KeyValue(key, value, create, mod, version)


def _dangling_reference(references: Iterable[Reference], data: Mapping[str, KeyValue]) -> str | None:
    """The first child in ``data`` whose parent is missing, described, or None."""
    for ref in references:
        for key, kv in data.items():
            parent = ref.parent_of(key, kv.value)
            if parent is not None and parent not in data:
                return f"{key} needs {parent}"
    return None


def _for_dedup(result: Result) -> Result:
    """What a retry gets back: the result without stored values, which can be up to
    1 MiB each (a conflict's current entry, a txn's gets) and are kept on every node."""
    if "current" not in result and not any(r.get("op") == "get" for r in result.get("responses", ())):
        return result
    trimmed = dict(result, values_trimmed=True)
    if isinstance(result.get("current"), dict):
        trimmed["current"] = {k: v for k, v in result["current"].items() if k != "value"}
    if "responses" in result:
        trimmed["responses"] = [
            {**r, "kv": {k: v for k, v in r["kv"].items() if k != "value"}}
            if r.get("op") == "get" and r.get("kv")
            else r
            for r in result["responses"]
        ]
    return trimmed


def _kv_row(kv: KeyValue) -> list[Any]:
    return [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version]


def _approx_size(key: str, value: Any) -> int:
    # Exactness does not matter: this only bounds the history's memory.
    if value is None or isinstance(value, (bool, int, float)):
        return len(key) + 64
    if isinstance(value, (str, bytes)):
        return len(key) + len(value) + 64
    return len(key) + len(msgpack.packb(value, use_bin_type=True)) + 64


def _key(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("key must be a non-empty string")
    return value


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Invalid(f"{name} must be a non-negative integer")
    return value


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{name} must be a list")
    return value


def _validate_op(op: Any) -> None:
    if not isinstance(op, dict) or op.get("op") not in ("get", "put", "delete"):
        raise _Invalid("a txn op must be a map with op get, put or delete")
    _key(op.get("key"))
