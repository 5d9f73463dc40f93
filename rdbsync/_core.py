"""What the sync and async clients share, free of I/O: endpoints, the retry rules of one
call (``Call``), request descriptions, result types and the SSE parser.

The retry rules follow the HTTP contract (README "HTTP API"):

- a read is retried on another endpoint after any failure to get an answer and after a 503;
- a write carrying an Idempotency-Key (kv put/delete, txn, table put/delete) is retried
  with the *same* key after a dropped connection, a timeout or a 503 whether ``applied`` is
  false or "unknown": the state machine answers a repeated key with the first result, so
  it applies at most once;
- any other write (restore, members, resync) is retried only when it cannot have applied:
  the connection was refused, or the server said ``"applied": false``;
- 4xx answers are final.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from rdbsync._errors import OutcomeUnknown, RdbsyncError, Unavailable, error_from_answer

DEFAULT_ENDPOINTS = ("http://127.0.0.1:8000", "http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003")
WATCH_READ_TIMEOUT = 30.0  # the server sends a keepalive every 10 s: three missed ones mean the stream is dead


def endpoints_from(value: str | Sequence[str] | None) -> list[str]:
    """Normalise endpoints: a list or a comma-separated string; ``None`` reads
    ``RDBSYNC_ENDPOINTS`` and falls back to the local cluster of ``scripts/run``."""
    if value is None:
        value = os.environ.get("RDBSYNC_ENDPOINTS") or list(DEFAULT_ENDPOINTS)
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in (i.strip() for i in items):
        if item:
            out.append((item if "://" in item else f"http://{item}").rstrip("/"))
    if not out:
        raise ValueError("no endpoints given")
    return out


def key_path(key: str) -> str:
    return quote(key, safe="/")


@dataclass(frozen=True)
class Req:
    """One API call. ``idempotent``: a write the server deduplicates by Idempotency-Key."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    write: bool = False
    idempotent: bool = False
    endpoint: str | None = None  # pinned to one node: no failover

    def query(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in (self.params or {}).items():
            if v is None:
                continue
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: Any
    create_revision: int
    mod_revision: int
    version: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyValue:
        return cls(d["key"], d.get("value"), d["create_revision"], d["mod_revision"], d["version"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "create_revision": self.create_revision,
            "mod_revision": self.mod_revision,
            "version": self.version,
        }


@dataclass(frozen=True)
class WatchEvent:
    """``type`` is "put", "delete", or "reset": the history was compacted, so the watch
    listed the prefix afresh at ``revision``; ``kvs`` is that full listing and every later
    event follows it (replace your state with it, as a client-go informer's relist)."""

    type: str
    revision: int
    kv: KeyValue | None = None
    prev_kv: KeyValue | None = None
    kvs: list[KeyValue] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "revision": self.revision}
        if self.type == "reset":
            out["kvs"] = [kv.to_dict() for kv in self.kvs]
        else:
            out["kv"] = self.kv.to_dict() if self.kv else None
            out["prev_kv"] = self.prev_kv.to_dict() if self.prev_kv else None
        return out


class SSEParser:
    """Server-Sent Events, one line at a time: ``feed`` returns (event, id, data) when a
    blank line ends an event, else None. Comments (keepalives) are skipped."""

    def __init__(self) -> None:
        self._event, self._id, self._data = "message", None, []  # type: tuple[str, str | None, list[str]]

    def feed(self, line: str) -> tuple[str, str | None, str] | None:
        if not line:
            if not self._data and self._id is None:
                self._event = "message"
                return None
            out = (self._event, self._id, "\n".join(self._data))
            self._event, self._id, self._data = "message", None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name == "data":
            self._data.append(value)
        return None


class Endpoints:
    """The endpoint list and the one currently used (sticky until it fails). Shared by the
    calls of one client; a plain index, so a race between threads only costs a retry."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.current = 0

    def get(self) -> str:
        return self.urls[self.current % len(self.urls)]

    def failed(self, url: str) -> None:
        if self.get() == url:
            self.current = (self.current + 1) % len(self.urls)


class Call:
    """The retry state of one call: which endpoint and time budget the next attempt gets,
    and what each outcome means. The driver (sync or async) sends, reports the outcome,
    sleeps ``pause()`` and asks again; ``next_attempt`` raises when the call is over."""

    def __init__(self, req: Req, endpoints: Endpoints, *, timeout: float, attempt_timeout: float) -> None:
        self.req = req
        self.endpoints = endpoints
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.headers: dict[str, str] = {}
        if req.idempotent:
            self.idempotency_key = uuid.uuid4().hex
            self.headers["Idempotency-Key"] = self.idempotency_key
        else:
            self.idempotency_key = ""
        self.attempts = 0
        self.maybe_applied = False
        self.last_error: RdbsyncError | None = None
        self._failures_in_round = 0

    def next_attempt(self) -> tuple[str, float]:
        """(endpoint, seconds for this attempt). Raises the call's error when no time is
        left or it may not be retried."""
        remaining = self.deadline - time.monotonic()
        if self.attempts and (remaining <= 0.05 or self.req.endpoint is not None):
            raise self.final_error()
        self.attempts += 1
        endpoint = self.req.endpoint or self.endpoints.get()
        return endpoint, max(0.1, min(self.attempt_timeout, remaining))

    def pause(self) -> float:
        """Seconds to wait before the next attempt: none while other endpoints are left to
        try in this round, then 50 ms doubling to 1 s (a refusal can be immediate)."""
        n = len(self.endpoints.urls)
        if self._failures_in_round % n:
            return 0.0
        rounds = self._failures_in_round // n
        delay: float = 0.05 * 2.0 ** max(0, rounds - 1)
        return min(1.0, delay, max(0.0, self.deadline - time.monotonic()))

    def final_error(self) -> RdbsyncError:
        err = self.last_error or Unavailable("unavailable", "no endpoint answered", applied=None)
        if self.req.write and self.maybe_applied and not isinstance(err, OutcomeUnknown):
            return OutcomeUnknown(
                "outcome_unknown",
                f"the write may have been applied ({err.code}: {err.message}); "
                f"retry with Idempotency-Key {self.idempotency_key or '(none)'} to apply it at most once",
                status=err.status,
                details=err.details,
                applied="unknown",
                endpoint=err.endpoint,
                idempotency_key=self.idempotency_key or None,
            )
        return err

    def _failed(self, endpoint: str, err: RdbsyncError) -> None:
        self.last_error = err
        self.endpoints.failed(endpoint)
        self._failures_in_round += 1

    def transport_error(self, endpoint: str, exc: Exception, *, sent: bool) -> None:
        """No answer. ``sent``: the request may have reached the server (anything but a
        refused connection). Returns to retry; raises when the call must stop."""
        what = type(exc).__name__
        err = Unavailable("unreachable", f"{endpoint}: {what}: {exc}", endpoint=endpoint, applied=None)
        if self.req.write and sent:
            self.maybe_applied = True
            if not self.req.idempotent:
                self.last_error = err
                raise self.final_error()
        self._failed(endpoint, err)

    def answer(self, endpoint: str, status: int, body: Any) -> bool:
        """An HTTP answer: True when it is the result; False to retry; raises the mapped
        error when it is final."""
        if status < 400:
            return True
        err = error_from_answer(status, body, endpoint)
        retryable = status in (502, 503) or (status == 504 and err.code != "wait_timeout")
        if not retryable:
            raise err
        if self.req.write:
            if err.applied == "unknown" or err.applied is None:
                self.maybe_applied = True
                if not self.req.idempotent:
                    self.last_error = err
                    raise self.final_error()
        self._failed(endpoint, err)
        return False
