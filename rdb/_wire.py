"""PySyncObj's wire framing, without its per-message compression.

PySyncObj sends ``zlib.compress(pickle.dumps(message), 3)`` for every Raft message. A
fresh deflate stream costs ~50 us to set up, whatever its level, and the leader's one
tick thread pays it for every message to every follower: it was the largest single cost
on the write path. ``stored_zlib`` builds a valid zlib stream of *stored* (uncompressed)
blocks instead, which any ``zlib.decompress`` (so any PySyncObj peer) reads unchanged.
Values are msgpack, often small or already compact; on loopback and LANs the bytes
saved were not worth the CPU.
"""

from __future__ import annotations

import struct
import zlib

_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no preset dictionary, "fastest" level
_MAX_STORED = 0xFFFF


def stored_zlib(data: bytes) -> bytes:
    """``data`` as a zlib stream of stored deflate blocks (RFC 1950/1951). Pure."""
    parts = [_HEADER]
    view = memoryview(data)
    offset, size = 0, len(data)
    while True:
        chunk = view[offset : offset + _MAX_STORED]
        offset += len(chunk)
        final = 1 if offset >= size else 0
        parts.append(struct.pack("<BHH", final, len(chunk), len(chunk) ^ 0xFFFF))
        parts.append(bytes(chunk))
        if final:
            break
    parts.append(struct.pack(">I", zlib.adler32(data)))
    return b"".join(parts)


def read_stored_zlib(framed: bytes) -> bytes | None:
    """The data of a stream ``stored_zlib`` made, checksum verified; None for anything
    else (a compressed stream from an older peer, or damage), which the caller hands to
    ``zlib.decompress``. Skips inflate's setup cost for our own messages. Pure."""
    if framed[:2] != _HEADER:
        return None
    parts = []
    offset, end = 2, len(framed) - 4
    while offset + 5 <= end:
        final, length, inverse = struct.unpack_from("<BHH", framed, offset)
        if final not in (0, 1) or length ^ inverse != 0xFFFF or offset + 5 + length > end:
            return None
        parts.append(framed[offset + 5 : offset + 5 + length])
        offset += 5 + length
        if final:
            data = b"".join(parts)
            if offset != end or struct.unpack_from(">I", framed, end)[0] != zlib.adler32(data):
                return None
            return data
    return None


class StoredZlib:
    """Stands in for the ``zlib`` module inside ``pysyncobj.tcp_connection``."""

    error = zlib.error

    @staticmethod
    def compress(data: bytes, level: int = -1) -> bytes:
        return stored_zlib(data)

    @staticmethod
    def decompress(data: bytes) -> bytes:
        plain = read_stored_zlib(data)
        return zlib.decompress(data) if plain is None else plain
