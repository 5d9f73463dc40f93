"""Schemathesis hooks for test_fuzz (loaded with SCHEMATHESIS_HOOKS).

``no_server_fault`` replaces schemathesis' ``not_a_server_error``, stricter where it
matters: every 5xx fails, except a 503 or 504 whose error body names a designed,
documented outcome (no quorum within the request timeout, a fenced protocol, a
``wait=applied`` that ran out of time...). Our internal errors are 503 ``internal`` (the
API never answers 500), so the built-in check, which takes any 5xx as a failure, could
not tell a bug from a cluster under load; this one fails on ``internal`` and on any 5xx
without our error body.
"""

from __future__ import annotations

from typing import Any

import schemathesis

DESIGNED = {
    503: {
        "no_quorum",
        "outcome_unknown",
        "not_applied",
        "unavailable",
        "fenced",
        "not_ready",
        "resync_failed",
        "unverified",
    },
    504: {"wait_timeout"},
}


@schemathesis.check
def no_server_fault(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if status < 500:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - no error body is itself the failure
        code = None
    if code in DESIGNED.get(status, ()):
        return None
    raise AssertionError(f"server error: {status} {code or 'without our error body'}")
