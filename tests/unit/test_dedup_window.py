"""The request-id (idempotency) table: a retry window of at least a minute at 5,000
writes/s, and a memory bound in bytes whatever the results look like."""

from __future__ import annotations

import time

import msgpack

from rdb import StateMachine
from rdb import _commands as cmds
from rdb._state import DEDUP_BYTES, DEDUP_LIMIT

WRITES_PER_SECOND = 5_000
WINDOW_SECONDS = 60


def test_a_retry_a_minute_later_at_5000_writes_per_second_is_still_a_duplicate() -> None:
    sm = StateMachine()
    first = cmds.put("k", 0, request_id="first")
    assert sm.apply(first, 1)["status"] == "ok"
    writes = WRITES_PER_SECOND * WINDOW_SECONDS
    payloads = (cmds.put(f"k{i % 1000}", i, request_id=f"{cmds.new_request_id()}") for i in range(writes))
    started = time.monotonic()
    for index, payload in enumerate(payloads, start=2):
        sm.apply(payload, index)
    assert time.monotonic() - started < 120  # bounded: about 15 s on the dev machine
    revision = sm.revision
    # The client retries its first write: it must not be applied a second time. With
    # 50,000 ids remembered (about 10 s at this rate) it was.
    again = sm.apply(first, writes + 2)
    assert again.get("duplicate") is True
    assert sm.revision == revision
    count, size = sm.dedup_size
    assert count == writes + 1 <= DEDUP_LIMIT and size <= DEDUP_BYTES


def test_the_table_is_bounded_by_bytes_oldest_first() -> None:
    sm = StateMachine(dedup_bytes=20_000)
    ops = [{"op": "put", "key": f"t{j}", "value": j} for j in range(100)]
    for i in range(200):  # each result holds 100 responses: a few KiB
        sm.apply(cmds.txn([], ops, [], request_id=f"txn-{i}"), i + 1)
    count, size = sm.dedup_size
    assert size <= 20_000 and 1 < count < 200
    assert sm.apply(cmds.txn([], ops, [], request_id="txn-199"), 500).get("duplicate") is True
    assert "duplicate" not in sm.apply(cmds.txn([], ops, [], request_id="txn-0"), 501)


def test_the_byte_count_survives_a_snapshot_and_an_old_format_one_loads() -> None:
    sm = StateMachine()
    for i in range(50):
        sm.apply(cmds.put("k", i, request_id=f"r{i}"), i + 1)
    copy = StateMachine()
    copy.restore(sm.snapshot())
    assert copy.dedup_size == sm.dedup_size
    # A snapshot written before the table was packed holds the results as maps.
    doc = msgpack.unpackb(sm.snapshot(), raw=False)
    doc["dedup"] = [[rid, msgpack.unpackb(res, raw=False)] for rid, res in doc["dedup"]]
    old = StateMachine()
    old.restore(msgpack.packb(doc, use_bin_type=True))
    assert old.dedup_size == sm.dedup_size
    assert old.apply(cmds.put("k", 0, request_id="r0"), 100).get("duplicate") is True
