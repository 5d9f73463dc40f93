"""Building and validating commands before they are proposed.

Every command is a versioned msgpack map that goes through the one replicated entry
point. The proposer stamps the request id here; the state machine re-checks every
precondition (CAS) itself. Validation here is what turns bad input into a clear error
*before* anything reaches the log: ``InvalidCommand`` means nothing was proposed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from typing import Any

import msgpack

from rdb._errors import InvalidCommand, ValueTooLarge
from rdb._state import COMMAND_VERSION, MAX_VALUE_BYTES, MAX_VALUE_DEPTH, too_deep

MAX_KEY_BYTES = 1024
MAX_TXN_OPS = 128


# A random 128-bit prefix per process, then a counter: unique across nodes and restarts
# like a uuid4 per request, without a getrandom() system call per write.
_ID_PREFIX = uuid.uuid4().hex
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    # A forked child must not hand out its parent's ids.
    global _ID_PREFIX, _id_counter
    _ID_PREFIX, _id_counter = uuid.uuid4().hex, itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A fresh request id (the only randomness on the write path, taken by the proposer).
    Safe from any thread (``itertools.count`` is atomic under the GIL)."""
    return f"{_ID_PREFIX}-{next(_id_counter)}"


def check_key(key: Any) -> str:
    """Raises ``InvalidCommand`` unless ``key`` is a non-empty string of at most 1 KiB."""
    if not isinstance(key, str) or not key:
        raise InvalidCommand("key must be a non-empty string")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidCommand("key must be valid UTF-8 (no lone surrogates)") from exc
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidCommand(f"key is longer than {MAX_KEY_BYTES} bytes")
    if "\x00" in key:
        raise InvalidCommand("key must not contain NUL")
    return key


def check_value(value: Any) -> bytes:
    """Encodes ``value`` (its stored form, which is what its size is). Raises
    ``InvalidCommand`` if it nests more than ``MAX_VALUE_DEPTH`` arrays/maps or cannot be
    encoded, ``ValueTooLarge`` (a subclass) if it is over ``MAX_VALUE_BYTES`` encoded.
    Every path that stores a value checks it here: put, txn, restore."""
    if too_deep(value):
        raise InvalidCommand(f"value nests more than {MAX_VALUE_DEPTH} arrays/maps")
    try:
        encoded: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidCommand(f"value cannot be stored: {exc}") from exc
    if len(encoded) > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"value is larger than {MAX_VALUE_BYTES} bytes encoded")
    return encoded


def check_revision(value: Any, name: str = "prev_revision") -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidCommand(f"{name} must be a non-negative integer")
    return value


def _encode(cmd: dict[str, Any]) -> bytes:
    """Pack ``cmd``; a command with a request id also carries ``dg``, a digest of
    everything but the id, so the state machine can tell a retry of this request from a
    different request that reuses the id (computed here, once, not on every node)."""
    cmd["v"] = COMMAND_VERSION
    try:
        if "rid" in cmd:
            body: bytes = msgpack.packb({k: v for k, v in cmd.items() if k != "rid"}, use_bin_type=True)
            cmd["dg"] = hashlib.blake2b(body, digest_size=16).hexdigest()
        packed: bytes = msgpack.packb(cmd, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an unencodable extra field in a txn op
        raise InvalidCommand(f"command cannot be encoded: {exc}") from exc
    return packed


def put(key: str, value: Any, *, prev_revision: int | None = None, request_id: str) -> bytes:
    check_key(key)
    check_value(value)
    return _encode(
        {"kind": "put", "rid": request_id, "key": key, "value": value, "prev_revision": check_revision(prev_revision)}
    )


def delete(key: str, *, prev_revision: int | None = None, request_id: str) -> bytes:
    check_key(key)
    return _encode({"kind": "delete", "rid": request_id, "key": key, "prev_revision": check_revision(prev_revision)})


def barrier() -> bytes:
    return _encode({"kind": "barrier"})


def batch(commands: list[bytes]) -> bytes:
    """Several encoded commands in one log entry: applied in order at that entry, each
    with its own result, as if they had been proposed one after another. Every member
    must know the kind (an older one would answer ``invalid`` and skip them all)."""
    return _encode({"kind": "batch", "cmds": commands})


_TARGETS = ("mod_revision", "create_revision", "version", "value")
_RESULTS = ("==", "!=", "<", ">")


def txn(
    compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]], *, request_id: str
) -> bytes:
    """Validates and encodes a transaction. Raises ``InvalidCommand`` on any bad part."""
    if len(compare) + len(success) + len(failure) > MAX_TXN_OPS:
        raise InvalidCommand(f"a txn has at most {MAX_TXN_OPS} compares and ops in all")
    total = 0
    for c in compare:
        if not isinstance(c, dict):
            raise InvalidCommand("a compare must be a map")
        check_key(c.get("key"))
        if c.get("target", "mod_revision") not in _TARGETS:
            raise InvalidCommand(f"compare target must be one of {', '.join(_TARGETS)}")
        if c.get("result", "==") not in _RESULTS:
            raise InvalidCommand(f"compare result must be one of {' '.join(_RESULTS)}")
        if c.get("target", "mod_revision") != "value":
            check_revision(c.get("value"), "compare value")
        else:
            total += len(check_value(c.get("value")))  # compare values count toward the size cap
    for branch in (success, failure):
        written: set[str] = set()
        for op in branch:
            if not isinstance(op, dict):
                raise InvalidCommand("a txn op must be a map")
            kind = op.get("op")
            if kind not in ("get", "put", "delete"):
                raise InvalidCommand("a txn op must be get, put or delete")
            key = check_key(op.get("key"))
            if kind != "get":
                if key in written:
                    raise InvalidCommand(f"a txn branch writes key {key!r} twice")
                written.add(key)
            if kind == "put":
                total += len(check_value(op.get("value")))
    if total > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"a txn carries more than {MAX_VALUE_BYTES} bytes of values (puts, value compares)")
    # typed_compare: value compares go by JSON type and value (see StateMachine._compare).
    cmd = {"kind": "txn", "rid": request_id, "compare": compare, "success": success, "failure": failure}
    return _encode({**cmd, "typed_compare": True})


RESTORE_CHUNK_BYTES = 256 * 1024


def restore_commands(snapshot: bytes, upload: str, keep_prefix: str = "") -> list[bytes]:
    """The command sequence that restores ``snapshot``: begin, chunks, commit.

    Each log entry stays well under PySyncObj's 64 KiB-chunking threshold multiple,
    whatever the snapshot size.
    """
    cmds = [_encode({"kind": "restore_begin", "upload": upload, "rid": f"{upload}:begin"})]
    for seq, start in enumerate(range(0, len(snapshot), RESTORE_CHUNK_BYTES)):
        cmds.append(
            _encode(
                {
                    "kind": "restore_chunk",
                    "upload": upload,
                    "seq": seq,
                    "data": snapshot[start : start + RESTORE_CHUNK_BYTES],
                    "rid": f"{upload}:{seq}",
                }
            )
        )
    cmds.append(
        _encode(
            {
                "kind": "restore_commit",
                "upload": upload,
                "rid": f"{upload}:commit",
                "keep_prefix": keep_prefix,
                "checked": True,  # apply checks every row and reference (see StateMachine)
            }
        )
    )
    return cmds


#: Rows per restore entry, at most: each entry's rows are checked on the tick thread as
#: it applies (about 2,000 rows in 10 ms), so no entry stalls it.
RESTORE_ROWS_PER_ENTRY = 2_000


def restore_row_commands(rows: list[list[Any]], revision: int, upload: str, keep_prefix: str = "") -> list[bytes]:
    """The command sequence that restores ``rows`` (``[key, value, create_revision,
    mod_revision, version]``, sorted by key, from a snapshot at ``revision``): begin,
    entries of at most ``RESTORE_ROWS_PER_ENTRY`` rows and about ``RESTORE_CHUNK_BYTES``
    each (a single row over that travels alone), commit. Raises ``InvalidCommand`` if a
    row cannot be encoded. CPU-heavy for big restores: call it off the event loop."""
    packer = msgpack.Packer(use_bin_type=True)
    parts: list[list[list[Any]]] = [[]]
    size = 0
    for row in rows:
        try:
            row_size = len(packer.pack(row))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCommand(f"row cannot be encoded: {exc}") from exc
        if parts[-1] and (size + row_size > RESTORE_CHUNK_BYTES or len(parts[-1]) >= RESTORE_ROWS_PER_ENTRY):
            parts.append([])
            size = 0
        parts[-1].append(row)
        size += row_size
    if not parts[-1]:
        parts.pop()
    begin = {"kind": "restore_begin", "upload": upload, "rows": len(rows), "parts": len(parts), "revision": revision}
    cmds = [_encode({**begin, "rid": f"{upload}:begin"})]
    for seq, part in enumerate(parts):
        cmds.append(
            _encode({"kind": "restore_rows", "upload": upload, "seq": seq, "rows": part, "rid": f"{upload}:{seq}"})
        )
    cmds.append(
        _encode(
            {
                "kind": "restore_commit",
                "upload": upload,
                "rid": f"{upload}:commit",
                "keep_prefix": keep_prefix,
                "checked": True,
            }
        )
    )
    return cmds
