"""Fault-injection endpoints under /v1/debug/, mounted only with --fault-injection.

Threading: asyncio loop. They change blade tables and the worker behind the resync
engine's back, which is the point: the chaos harness and the fencing tests use them.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from node._blades import Fault
from node._common import RUNTIME, int_param, json_body
from node._exceptions import ApiError


class FaultBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str
    mode: Literal["error", "hang"]
    count: int | None = Field(default=None, ge=1, le=1_000_000)


class TamperBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str
    key: str = Field(min_length=1, max_length=1024)
    row: dict[str, JsonValue] | None


class DelayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=60)


def _blade_table(request: web.Request, name: str) -> Any:
    table = request.app[RUNTIME].tables.get(name)
    if table is None:
        raise ApiError(
            404, "unknown_table", f"no blade table {name!r}; tables: {', '.join(request.app[RUNTIME].tables)}"
        )
    return table


async def set_fault(request: web.Request) -> web.Response:
    body = await json_body(request, FaultBody)
    table = _blade_table(request, body.table)
    table.fault = Fault(body.mode, body.count)
    # Make the fault bite now: the next resync of that table runs in full.
    runtime = request.app[RUNTIME]
    runtime.engine.status[body.table].needs_full = True
    runtime.wake()
    return web.json_response({"table": body.table, "mode": body.mode, "count": body.count})


async def clear_faults(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    cleared = [name for name, t in runtime.tables.items() if t.fault is not None]
    for table in runtime.tables.values():
        table.fault = None
    runtime.worker_delay = 0.0
    return web.json_response({"cleared": cleared})


async def tamper(request: web.Request) -> web.Response:
    body = await json_body(request, TamperBody)
    table = _blade_table(request, body.table)
    for field in table.index_fields:
        if body.row is not None and field in body.row and not isinstance(body.row[field], str):
            raise ApiError(422, "bad_row", f"{body.table}.{field} is an indexed field: it must be a string")
    table.tamper(body.key, body.row)
    return web.json_response({"table": body.table, "key": body.key, "row": body.row})


async def delay_worker(request: web.Request) -> web.Response:
    body = await json_body(request, DelayBody)
    request.app[RUNTIME].worker_delay = body.seconds
    return web.json_response({"worker_delay": body.seconds})


async def timings(request: web.Request) -> web.Response:
    """Wall times at which revisions were applied to the store and to every blade table
    on this node (the benchmark computes commit-to-blade latency from them)."""
    runtime = request.app[RUNTIME]
    since = int_param(request, "since") or 0
    return web.json_response(
        {
            "commits": [[r, t] for r, t in runtime.store.commit_times if r > since],
            "blades": [[r, t] for r, t in runtime.blade_times if r > since],
        }
    )


def add_debug_routes(app: web.Application) -> None:
    app.router.add_get("/v1/debug/timings", timings)
    app.router.add_post("/v1/debug/faults", set_fault)
    app.router.add_delete("/v1/debug/faults", clear_faults)
    app.router.add_post("/v1/debug/tamper", tamper)
    app.router.add_post("/v1/debug/delay", delay_worker)
