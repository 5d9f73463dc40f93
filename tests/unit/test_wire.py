"""The Raft wire framing: zlib *stored* blocks that any zlib reader decodes."""

from __future__ import annotations

import os
import zlib

import pytest

from rdb._wire import StoredZlib, stored_zlib


@pytest.mark.parametrize("size", [0, 1, 1551, 65_535, 65_536, 65_537, 200_000, 1 << 20])
def test_stored_streams_decode_with_the_standard_zlib(size: int) -> None:
    data = os.urandom(size)
    assert zlib.decompress(stored_zlib(data)) == data


def test_a_corrupted_stream_is_detected_by_its_checksum() -> None:
    framed = bytearray(stored_zlib(b"hello raft"))
    framed[8] ^= 0xFF  # a payload byte
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(framed))


def test_pysyncobj_sends_stored_blocks_and_still_reads_compressed_ones() -> None:
    import pysyncobj.tcp_connection as tcp

    import rdb._raft  # noqa: F401 - installs the framing

    assert tcp.zlib is StoredZlib
    assert StoredZlib.decompress(zlib.compress(b"from an older peer", 3)) == b"from an older peer"
    assert StoredZlib.compress(b"x" * 1000, 3) == stored_zlib(b"x" * 1000)
