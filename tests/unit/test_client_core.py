"""The client's retry rules (rdbsync._core.Call) and its SSE parser, without a server."""

from __future__ import annotations

import time

import pytest

from rdbsync import Conflict, Fenced, InvalidRequest, NotFound, OutcomeUnknown, Unavailable, WaitTimeout
from rdbsync._core import Call, Endpoints, Req, SSEParser, endpoints_from
from rdbsync._errors import error_from_answer

EPS = ["http://a", "http://b", "http://c"]


def _call(req: Req, timeout: float = 5.0) -> Call:
    return Call(req, Endpoints(EPS), timeout=timeout, attempt_timeout=1.0)


def _err(code: str, applied: object = None) -> dict:
    body: dict = {"code": code, "message": code, "details": {}}
    if applied is not None:
        body["applied"] = applied
    return {"error": body}


PUT = Req("PUT", "/v1/kv/k", json={"value": 1}, write=True, idempotent=True)
RESTORE = Req("POST", "/v1/restore", content=b"x", write=True)
GET = Req("GET", "/v1/kv/k")


def test_an_idempotent_write_keeps_its_key_across_retries_and_endpoints() -> None:
    call = _call(PUT)
    key = call.headers["Idempotency-Key"]
    first, _ = call.next_attempt()
    call.transport_error(first, TimeoutError("read timeout"), sent=True)  # may have applied
    second, _ = call.next_attempt()
    assert second != first and call.headers["Idempotency-Key"] == key
    assert call.answer(second, 503, _err("outcome_unknown", "unknown")) is False  # retry again
    third, _ = call.next_attempt()
    assert call.answer(third, 200, {"revision": 7}) is True
    assert call.headers["Idempotency-Key"] == key


def test_two_calls_get_different_keys() -> None:
    assert _call(PUT).headers["Idempotency-Key"] != _call(PUT).headers["Idempotency-Key"]


def test_a_write_without_idempotency_is_not_retried_once_it_may_have_applied() -> None:
    call = _call(RESTORE)
    assert "Idempotency-Key" not in call.headers
    ep, _ = call.next_attempt()
    with pytest.raises(OutcomeUnknown):
        call.transport_error(ep, TimeoutError("read timeout"), sent=True)
    call = _call(RESTORE)
    ep, _ = call.next_attempt()
    with pytest.raises(OutcomeUnknown):
        call.answer(ep, 503, _err("outcome_unknown", "unknown"))


def test_a_write_that_cannot_have_applied_is_retried() -> None:
    call = _call(RESTORE)
    ep, _ = call.next_attempt()
    call.transport_error(ep, ConnectionRefusedError(), sent=False)
    ep, _ = call.next_attempt()
    assert call.answer(ep, 503, _err("no_quorum", False)) is False
    ep, _ = call.next_attempt()
    assert call.answer(ep, 200, {}) is True


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "not_found", NotFound),
        (409, "cas_conflict", Conflict),
        (422, "schema", InvalidRequest),
        (504, "wait_timeout", WaitTimeout),
    ],
)
def test_4xx_and_wait_timeouts_are_final(status: int, code: str, cls: type) -> None:
    call = _call(PUT)
    ep, _ = call.next_attempt()
    with pytest.raises(cls) as info:
        call.answer(ep, status, _err(code, False))
    assert info.value.code == code and info.value.status == status


def test_reads_fail_over_and_end_unavailable_at_the_deadline() -> None:
    call = _call(GET, timeout=0.2)
    seen = []
    with pytest.raises(Unavailable):
        for _ in range(1000):
            ep, _ = call.next_attempt()
            seen.append(ep)
            call.transport_error(ep, ConnectionRefusedError(), sent=True)
            time.sleep(call.pause())
    assert set(seen) == set(EPS)


def test_a_write_whose_attempts_all_may_have_applied_ends_outcome_unknown_with_its_key() -> None:
    call = _call(PUT, timeout=0.2)
    with pytest.raises(OutcomeUnknown) as info:
        for _ in range(1000):
            ep, _ = call.next_attempt()
            call.transport_error(ep, TimeoutError(), sent=True)
            time.sleep(call.pause())
    assert info.value.idempotency_key == call.headers["Idempotency-Key"]


def test_error_mapping() -> None:
    assert isinstance(error_from_answer(503, _err("fenced")), Fenced)
    assert isinstance(error_from_answer(503, _err("no_quorum", False)), Unavailable)
    assert error_from_answer(500, "oops").code == "http_500"


def test_endpoints() -> None:
    assert endpoints_from("127.0.0.1:1, http://h:2/") == ["http://127.0.0.1:1", "http://h:2"]
    with pytest.raises(ValueError):
        endpoints_from(" , ")


def test_sse_parser() -> None:
    p = SSEParser()
    out = [
        p.feed(line)
        for line in ["id: 5", "event: put", 'data: {"a":1}', "", ": keepalive", "", "event: x", "data: 1", ""]
    ]
    assert [o for o in out if o] == [("put", "5", '{"a":1}'), ("x", None, "1")]
