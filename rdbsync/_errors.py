"""The client's exception tree: one class per kind of answer a caller handles differently.

Every exception carries the server's ``code``, ``message``, ``details``, HTTP ``status``
(0 when no server answered) and ``applied`` (False: not applied and never will be;
"unknown": it may still apply; None: a read, or not said).
"""

from __future__ import annotations

from typing import Any


class RdbsyncError(Exception):
    """Base of every error the client raises."""

    exit_code = 5

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 0,
        details: dict[str, Any] | None = None,
        applied: bool | str | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}
        self.applied = applied
        self.endpoint = endpoint


class NotFound(RdbsyncError):
    """404: the key, row, table or member does not exist."""

    exit_code = 1


class Conflict(RdbsyncError):
    """409: compare-and-set failed (``details["current"]``), a row is still referenced, a
    member exists already."""

    exit_code = 3


class InvalidRequest(RdbsyncError):
    """400/405/413/422: the request is wrong (schema, key, parameter, reference). Not applied."""

    exit_code = 5


class Unauthorized(RdbsyncError):
    """401: a missing or wrong bearer token (``--token`` / ``RDBSYNC_API_TOKEN``)."""

    exit_code = 5


class Compacted(RdbsyncError):
    """410: the history a watch asked for is compacted (``details["compacted_revision"]``)."""

    exit_code = 5


class Unavailable(RdbsyncError):
    """No endpoint could serve the request within the deadline: no quorum, a node down,
    a connection refused. For a write, ``applied`` says whether it may still apply."""

    exit_code = 4


class Fenced(Unavailable):
    """503 ``fenced``: the protocol or application is fenced on that node (``details``
    names the table, cause and since when)."""


class OutcomeUnknown(Unavailable):
    """A write whose outcome is unknown after every allowed retry: it may still apply.
    Retrying with the same ``idempotency_key`` applies it at most once."""

    def __init__(self, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idempotency_key = idempotency_key


class WaitTimeout(Unavailable):
    """504 ``wait_timeout``: the write is committed (``details["revision"]``) but some node
    had not applied it to its blade tables within the wait (``details["laggards"]``)."""


_BY_STATUS: dict[int, type[RdbsyncError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    410: Compacted,
    413: InvalidRequest,
    422: InvalidRequest,
    504: WaitTimeout,
}


def error_from_answer(status: int, body: Any, endpoint: str | None = None) -> RdbsyncError:
    """The exception for an HTTP error answer (``{"error": {code, message, details, applied}}``)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        text = body if isinstance(body, str) else repr(body)
        err = {"code": f"http_{status}", "message": text[:300] or f"HTTP {status}"}
    code = str(err.get("code") or f"http_{status}")
    cls = _BY_STATUS.get(status)
    if cls is None:
        if code == "fenced":
            cls = Fenced
        elif code == "outcome_unknown" or err.get("applied") == "unknown":
            cls = OutcomeUnknown
        elif status >= 500:
            cls = Unavailable
        else:
            cls = RdbsyncError
    details = err.get("details")
    return cls(
        code,
        str(err.get("message") or ""),
        status=status,
        details=details if isinstance(details, dict) else {},
        applied=err.get("applied"),
        endpoint=endpoint,
    )
