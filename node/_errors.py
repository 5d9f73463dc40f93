"""The one place where errors become HTTP answers (the tree is in ``node._exceptions``).

Every other exception is translated by ``to_response``: the rdb tree, pydantic's
``ValidationError``, aiohttp's HTTP exceptions, and finally anything unexpected, which
is logged and answered 503 ``internal`` (the API never answers 500).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError

from node._exceptions import ApiError, AppMismatch, Fenced
from node._logging import log_event
from rdb import (
    Compacted,
    InvalidCommand,
    InvalidMember,
    MembershipChangePending,
    NoQuorum,
    NotApplied,
    OutcomeUnknown,
    ProposalFailed,
    ValueTooLarge,
)

log = logging.getLogger("node.http")


def error_response(err: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": err.code, "message": err.message, "details": err.details}
    if err.applied is not None:
        body["applied"] = err.applied
    return web.json_response({"error": body}, status=err.status)


def translate(exc: BaseException, *, is_write: bool) -> ApiError:
    """Map any exception to the ``ApiError`` the client sees."""
    if isinstance(exc, ApiError):
        return exc
    applied_if_write: bool | None = False if is_write else None
    if isinstance(exc, Fenced):
        f = exc.fence
        return ApiError(
            503,
            "fenced",
            f"{f.protocol} is fenced on this node: {f.table} {f.cause}: {f.message}",
            f.to_dict(exc.clock_offset),
        )
    if isinstance(exc, AppMismatch):
        return ApiError(409, "app_mismatch", str(exc), applied=False)
    if isinstance(exc, ValueTooLarge):
        return ApiError(413, "too_large", str(exc), applied=applied_if_write)
    if isinstance(exc, InvalidMember):
        return ApiError(422, "invalid_member", str(exc), exc.details, applied=False)
    if isinstance(exc, InvalidCommand):
        return ApiError(422, "invalid", str(exc), applied=applied_if_write)
    if isinstance(exc, ValidationError):
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        first = errors[0] if errors else {"loc": "", "msg": "invalid"}
        where = f"{first['loc']}: " if first["loc"] else ""
        return ApiError(422, "schema", f"{where}{first['msg']}", {"errors": errors}, applied=applied_if_write)
    if isinstance(exc, Compacted):
        return ApiError(410, "compacted", str(exc), {"requested": exc.requested, "compacted_revision": exc.compacted})
    if isinstance(exc, NoQuorum):
        return ApiError(503, "no_quorum", str(exc), {"reason": exc.reason}, applied=exc.applied if is_write else None)
    if isinstance(exc, OutcomeUnknown):
        return ApiError(503, "outcome_unknown", str(exc), {"reason": exc.reason}, applied="unknown")
    if isinstance(exc, MembershipChangePending):
        return ApiError(
            409, "membership_change_pending", str(exc), {"reason": exc.reason, **exc.details}, applied=False
        )
    if isinstance(exc, NotApplied):
        return ApiError(503, "not_applied", str(exc), {"reason": exc.reason}, applied=False)
    if isinstance(exc, ProposalFailed):
        return ApiError(503, "unavailable", str(exc), {"reason": exc.reason}, applied=exc.applied)
    if isinstance(exc, json.JSONDecodeError):
        return ApiError(
            400, "bad_json", f"body is not valid JSON: {exc.msg} at position {exc.pos}", applied=applied_if_write
        )
    if isinstance(exc, RequestPayloadError):
        # e.g. a body announced as gzip that is not
        return ApiError(400, "bad_body", f"the request body cannot be read: {exc}", applied=applied_if_write)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return ApiError(413, "too_large", "request body is too large", applied=applied_if_write)
    if isinstance(exc, web.HTTPNotFound):
        return ApiError(404, "no_route", "no such endpoint")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return ApiError(405, "method_not_allowed", f"method not allowed; allowed: {sorted(exc.allowed_methods)}")
    if isinstance(exc, web.HTTPException):
        return ApiError(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    log_event(log, logging.ERROR, "request_failed", exc_info=exc, error=repr(exc))
    return ApiError(503, "internal", f"internal error: {type(exc).__name__}", applied="unknown" if is_write else None)


def constraint_error(result: dict[str, Any]) -> ApiError:
    """A referential violation decided by the state machine: 409 if the row is still
    referred to, 422 if it refers to a missing row."""
    code = str(result.get("code"))
    status = 409 if code == "still_referenced" else 422
    details = {k: v for k, v in result.items() if k in ("key", "parent", "referrers", "revision")}
    return ApiError(status, code, str(result.get("message")), details, applied=False)


def check_write_result(result: dict[str, Any], what: str) -> int:
    """The revision of an applied write; raises the ``ApiError`` for one the state
    machine turned down (CAS conflict, missing key, constraint, a reused request id,
    invalid)."""
    status = result.get("status")
    revision = int(result.get("revision", 0))
    if status == "ok":
        return revision
    if status == "conflict":
        raise ApiError(
            409,
            "cas_conflict",
            f"compare-and-set failed on {what}: mod_revision differs",
            {"current": result.get("current"), "revision": revision},
            applied=False,
        )
    if status == "not_found":
        raise ApiError(404, "not_found", f"{what} does not exist", {"revision": revision}, applied=False)
    if status == "constraint":
        raise constraint_error(result)
    if status == "idempotency_conflict":
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request; use a new key",
            {"revision": revision},
            applied=False,
        )
    raise ApiError(422, "invalid", str(result.get("message", "rejected by the state machine")), applied=False)
