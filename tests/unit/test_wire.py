"""The Raft wire framing: zlib *stored* blocks that any zlib reader decodes."""

from __future__ import annotations

import os
import zlib

import pytest

from rdb._wire import StoredZlib, read_stored_zlib, stored_zlib


@pytest.mark.parametrize("size", [0, 1, 1551, 65_535, 65_536, 65_537, 200_000, 1 << 20])
def test_stored_streams_decode_with_the_standard_zlib(size: int) -> None:
    data = os.urandom(size)
    assert zlib.decompress(stored_zlib(data)) == data
    assert read_stored_zlib(stored_zlib(data)) == data  # the fast path reads its own


def test_the_fast_path_declines_what_it_did_not_make() -> None:
    assert read_stored_zlib(zlib.compress(b"compressed by an older peer", 3)) is None
    assert read_stored_zlib(b"") is None
    framed = stored_zlib(b"hello raft")
    assert read_stored_zlib(framed[:-1]) is None  # truncated
    assert read_stored_zlib(framed + b"x") is None  # trailing bytes


def test_a_corrupted_stream_is_detected_by_its_checksum() -> None:
    framed = bytearray(stored_zlib(b"hello raft"))
    framed[8] ^= 0xFF  # a payload byte
    assert read_stored_zlib(bytes(framed)) is None
    with pytest.raises(zlib.error):
        StoredZlib.decompress(bytes(framed))


def test_pysyncobj_sends_stored_blocks_and_still_reads_compressed_ones() -> None:
    import pysyncobj.tcp_connection as tcp

    import rdb._raft  # noqa: F401 - installs the framing

    assert tcp.zlib is StoredZlib
    assert StoredZlib.decompress(zlib.compress(b"from an older peer", 3)) == b"from an older peer"
    assert StoredZlib.compress(b"x" * 1000, 3) == stored_zlib(b"x" * 1000)
