"""The Raft transport's receive path checks a frame's MAC once (``rdb._raft``): the
token's time is read unverified, and trusted only after ``decrypt`` has verified the MAC
that covers it. Replays and tampering are still refused."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pysyncobj.pickle as raft_pickle
import pytest
from cryptography.fernet import Fernet, InvalidToken

from rdb._raft import _FRAME_HEADER, _process_parse_message, fernet_time
from rdb._wire import StoredZlib


@pytest.mark.parametrize("at", [0, 1, 1_234_567, 2**40])
def test_the_time_read_from_the_head_is_the_verified_one(at: int) -> None:
    f = Fernet(Fernet.generate_key())
    token = f.encrypt_at_time(b"x" * 100, at)
    assert fernet_time(token) == at == f.extract_timestamp(token)


def test_a_head_that_is_no_fernet_token_is_refused() -> None:
    with pytest.raises(ValueError):
        fernet_time(base64.urlsafe_b64encode(b"\x81" + bytes(8)))
    with pytest.raises(ValueError):
        fernet_time(b"")


def test_a_token_whose_time_was_changed_fails_decrypt() -> None:
    f = Fernet(Fernet.generate_key())
    raw = bytearray(base64.urlsafe_b64decode(f.encrypt_at_time(b"payload", 100)))
    raw[1:9] = struct.pack(">Q", 10**9)
    forged = base64.urlsafe_b64encode(bytes(raw))
    assert fernet_time(forged) == 10**9
    with pytest.raises(InvalidToken):
        f.decrypt(forged)


class _Conn:
    """What ``_process_parse_message`` reads of a PySyncObj ``TcpConnection``."""

    def __init__(self, encryptor: Fernet) -> None:
        self.encryptor = encryptor
        self.recvLastTimestamp = 0
        self.recvRandKey = None
        self._TcpConnection__readBuffer = bytearray()
        self.disconnected = False

    def disconnect(self) -> None:
        self.disconnected = True

    def feed(self, token: bytes) -> Any:
        self._TcpConnection__readBuffer += _FRAME_HEADER.pack(len(token)) + token
        return _process_parse_message(self)


def _frame(f: Fernet, message: Any, at: int) -> bytes:
    return f.encrypt_at_time(StoredZlib.compress(raft_pickle.dumps(message)), at)


def test_frames_in_time_order_pass_and_a_replayed_or_forged_one_drops_the_connection() -> None:
    f = Fernet(Fernet.generate_key())
    conn = _Conn(f)
    assert conn.feed(_frame(f, {"type": "a"}, 10)) == {"type": "a"}
    assert conn.feed(_frame(f, {"type": "b"}, 10)) == {"type": "b"}  # same second: fine
    assert conn.recvLastTimestamp == 10 and not conn.disconnected
    assert conn.feed(_frame(f, {"type": "old"}, 9)) is None  # a replay of an older frame
    assert conn.disconnected and conn.recvLastTimestamp == 10

    conn = _Conn(f)
    raw = bytearray(base64.urlsafe_b64decode(_frame(f, {"type": "c"}, 20)))
    raw[1:9] = struct.pack(">Q", 30)  # claims a later time: the MAC no longer matches
    assert conn.feed(base64.urlsafe_b64encode(bytes(raw))) is None
    assert conn.disconnected and conn.recvLastTimestamp == 0
