"""The data plane of the loaded app: ``GET /v1/data/<consumer>/<operation>``.

Each operation is one of the app's ``DataPlane`` declarations: required query
parameters, then the one fencing guard (for the operation's scope, e.g. a vserver),
then the app's handler on the blade tables, whose answer is stamped with the revision
every table it reads (and its consumer depends on) reflects.

Threading: asyncio loop. Raises ``ApiError`` / ``Fenced``; the error middleware in
``node._http`` translates them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from fencing import corrupt_table
from node._common import RUNTIME
from node._exceptions import ApiError, BadRequest, Fenced
from node._logging import log_event
from node._runtime import BladeRuntime
from node.app import App, BladeView, DataPlane

log = logging.getLogger("node.api")


def _require(request: web.Request, names: tuple[str, ...]) -> None:
    for name in names:
        if not request.query.get(name):
            raise ApiError(422, "bad_parameter", f"query parameter {name!r} is required")


def decide(runtime: BladeRuntime, op: DataPlane, query: Mapping[str, str]) -> dict[str, Any]:
    """Run the app's handler. A blade row in a shape it cannot read (memory corruption, a
    bug) fails closed: ``Fenced`` with cause ``corrupt_table``, and a full resync of every
    table is started to repair it. ``BadRequest`` becomes 422 ``bad_parameter``."""
    tables: Mapping[str, BladeView] = runtime.tables
    try:
        return op.handler(tables, query)
    except BadRequest as exc:
        raise ApiError(422, "bad_parameter", str(exc)) from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if runtime.request_full_resync("corrupt_table"):
            log_event(
                log, logging.ERROR, "blade_row_unreadable", protocol=op.consumer, error=repr(exc), action="full_resync"
            )
        fence = corrupt_table(runtime.policy, op.consumer, f"{type(exc).__name__}: {exc}", runtime.clock())
        raise Fenced(fence, runtime.clock_offset) from None


def _handler(op: DataPlane) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        _require(request, op.params)
        runtime = request.app[RUNTIME]
        scope = request.query.get(op.scope) if op.scope else None
        await runtime.guard(op.consumer, scope)
        decision = decide(runtime, op, request.query)
        revision = runtime.applied_revision(op.reads | runtime.policy.dependencies.get(op.consumer, frozenset()))
        return web.json_response({**decision, "revision": revision}, headers={"X-Rdb-Revision": str(revision)})

    return handle


def add_data_plane_routes(router: web.UrlDispatcher, app: App) -> None:
    for op in app.data_plane:
        router.add_get(f"/v1/data/{op.consumer}/{op.operation}", _handler(op))
