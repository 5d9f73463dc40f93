"""The node package's exception tree (translated to HTTP in one place: ``node._errors``).

    NodeError
    ├── ConfigError     bad or missing configuration (flags, environment); exit 2
    ├── ApiError        an answer decided by a handler: HTTP status and a machine code
    ├── Fenced          a data-plane request hit a fence: 503 ``fenced``
    ├── InjectedFault   a blade table's injected resync failure (fault injection only)
    ├── AppError        an app's declarations are inconsistent, or it cannot be loaded; exit 2
    ├── UndeclaredRead  a projection read a table its blade table does not declare
    ├── BadRequest      a data-plane handler refused its input: 422 ``bad_parameter``
    └── AppMismatch     a management write on a node whose app is not the cluster's: 409

The last three are public as ``node.app.AppError`` etc.

Errors of the other packages (``rdb.RdbError``, pydantic's ``ValidationError``) are
translated by ``node._errors.translate``; anything else is a bug, logged and answered 503.
"""

from __future__ import annotations

from typing import Any

from fencing import Fence


class NodeError(Exception):
    """Base of every error the node package raises on purpose."""


class ConfigError(NodeError):
    """Bad or missing configuration; the message says which setting and why."""


class ApiError(NodeError):
    """An error answer: ``status`` and a machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        applied: bool | str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.applied = applied


class Fenced(NodeError):
    """A data-plane request hit a fence (answered 503 ``fenced``)."""

    def __init__(self, fence: Fence, clock_offset: float = 0.0) -> None:
        super().__init__(fence.message)
        self.fence = fence
        #: Turns the fence's policy-clock ``since`` into wall time in the answer.
        self.clock_offset = clock_offset


class InjectedFault(NodeError):
    """Raised by a blade table whose adapter has an injected ``error`` fault."""


class AppError(NodeError, ValueError):
    """An app's declarations are inconsistent, or it cannot be loaded; the message names
    the problem."""


class UndeclaredRead(NodeError, LookupError):
    """A projection read a table its blade table does not declare (that table's resync
    fails and fences its consumers)."""


class BadRequest(NodeError, ValueError):
    """Raised by a data-plane handler for bad input: the node answers 422 ``bad_parameter``."""


class AppMismatch(NodeError):
    """A management-table write reached a node whose app (or version) is not the one the
    cluster records: answered 409 ``app_mismatch``, nothing proposed."""
