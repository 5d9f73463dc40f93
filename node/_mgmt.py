"""HTTP handlers for management tables, blade tables, resync and the data plane.

Threading: asyncio loop. Handlers raise ``ApiError`` (or library errors); the error
middleware in ``node._http`` translates them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from fencing import policy_to_document
from node._common import (
    CLIENT,
    CONFIG,
    RUNTIME,
    STORE,
    bool_param,
    consistent_read,
    int_param,
    json_body,
    members_registry,
    request_id,
)
from node._dataplane import add_data_plane_routes
from node._errors import check_write_result
from node._exceptions import ApiError
from node._tables import RowKeyMismatch, TableDef, validate_row
from resync import UnknownTable

WAIT_POLL_SECONDS = 0.05

log = logging.getLogger("node.api")


def _table(request: web.Request) -> TableDef:
    name = request.match_info["table"]
    registry = request.app[RUNTIME].registry
    table = registry.get(name)
    if table is None:
        raise ApiError(404, "unknown_table", f"no management table {name!r}; tables: {', '.join(registry)}")
    return table


def check_row(table: TableDef, key: str, body: Any) -> dict[str, Any]:
    """Validate a row for ``table`` under ``key``; raises ``ApiError`` 422."""
    try:
        return validate_row(table, key, body)
    except RowKeyMismatch as exc:
        raise ApiError(422, "key_mismatch", str(exc), applied=False) from None
    except ValidationError as exc:
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        first = errors[0]
        raise ApiError(
            422,
            "schema",
            f"{table.name}: {first['loc']}: {first['msg']}" if first["loc"] else first["msg"],
            {"errors": errors},
            applied=False,
        ) from None


async def list_tables(request: web.Request) -> web.Response:
    return web.json_response({"tables": request.app[RUNTIME].registry.json_schemas()})


async def list_rows(request: web.Request) -> web.Response:
    table = _table(request)
    limit = int_param(request, "limit", minimum=1, maximum=10_000) or 1000
    start_after = request.query.get("start_after")
    staleness = await consistent_read(request)
    store = request.app[STORE]
    kvs, more = store.range(table.prefix, start_after=table.prefix + start_after if start_after else None, limit=limit)
    body: dict[str, Any] = {
        "table": table.name,
        "rows": {kv.key[len(table.prefix) :]: kv.value for kv in kvs},
        "more": more,
        "revision": store.revision,
    }
    if staleness:
        body["staleness"] = staleness
    return web.json_response(body, headers={"X-Rdb-Revision": str(body["revision"])})


async def get_row(request: web.Request) -> web.Response:
    table = _table(request)
    key = request.match_info["key"]
    staleness = await consistent_read(request)
    store = request.app[STORE]
    kv = store.get(table.storage_key(key))
    if kv is None:
        raise ApiError(404, "not_found", f"{table.name} has no row {key!r}")
    body = {
        "table": table.name,
        "key": key,
        "row": kv.value,
        "mod_revision": kv.mod_revision,
        "create_revision": kv.create_revision,
        "version": kv.version,
    }
    if staleness:
        body["staleness"] = staleness
    return web.json_response(body, headers={"X-Rdb-Revision": str(store.revision)})


async def put_row(request: web.Request) -> web.Response:
    table = _table(request)
    key = request.match_info["key"]
    wait = _wait_params(request)
    prev = int_param(request, "prev_revision")
    request.app[RUNTIME].check_table_write()
    row = check_row(table, key, await json_body(request))
    result = await request.app[STORE].put(
        table.storage_key(key), row, prev_revision=prev, request_id=request_id(request)
    )
    return await _table_write_answer(request, table, key, result, wait)


async def delete_row(request: web.Request) -> web.Response:
    table = _table(request)
    key = request.match_info["key"]
    wait = _wait_params(request)
    prev = int_param(request, "prev_revision")
    request.app[RUNTIME].check_table_write()
    result = await request.app[STORE].delete(table.storage_key(key), prev_revision=prev, request_id=request_id(request))
    return await _table_write_answer(request, table, key, result, wait)


def _wait_params(request: web.Request) -> float | None:
    wait = request.query.get("wait")
    if wait is None:
        return None
    if wait != "applied":
        raise ApiError(422, "bad_parameter", "wait must be 'applied'", applied=False)
    raw = request.query.get("timeout", "5")
    try:
        timeout = float(raw)
    except ValueError:
        raise ApiError(
            422, "bad_parameter", f"timeout must be a number of seconds, got {raw!r}", applied=False
        ) from None
    if not 0 < timeout <= 120:
        raise ApiError(422, "bad_parameter", "timeout must be between 0 and 120 seconds", applied=False)
    return timeout


async def _table_write_answer(
    request: web.Request, table: TableDef, key: str, result: dict[str, Any], wait: float | None
) -> web.Response:
    revision = check_write_result(result, f"{table.name} row {key!r}")
    body: dict[str, Any] = {"revision": revision}
    if wait is not None:
        nodes, laggards = await wait_applied(request.app, revision, wait)
        body["nodes"] = nodes
        if laggards:
            raise ApiError(
                504,
                "wait_timeout",
                f"revision {revision} is committed but not applied within {wait}s on: {', '.join(laggards)}",
                {"revision": revision, "nodes": nodes, "laggards": laggards},
                applied=True,
            )
    return web.json_response(body, headers={"X-Rdb-Revision": str(revision)})


async def wait_applied(app: web.Application, revision: int, timeout: float) -> tuple[dict[str, Any], list[str]]:
    """Poll every member until its blade tables reflect ``revision``.

    Returns (per-node outcome, laggards). A fenced node is reported, not waited for;
    an unreachable one is reported as such.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    cfg = app[CONFIG]
    runtime = app[RUNTIME]
    session = app[CLIENT]
    headers = {"Authorization": f"Bearer {cfg.api_token}"} if cfg.api_token else {}
    members = app[STORE].status().members
    registry = members_registry(app)
    outcome: dict[str, Any] = {}

    async def probe(address: str) -> tuple[str, dict[str, Any]]:
        info = registry.get(address, {"id": address})
        node_id = info.get("id", address)
        if address == cfg.raft_address:
            agents = runtime.agents.applied_revision()
            applied = runtime.applied_revision() if agents is None else min(runtime.applied_revision(), agents)
            return node_id, _node_outcome(applied, bool(runtime.fences()), revision)
        url = info.get("http_url")
        if not url:
            return node_id, {"outcome": "unreachable", "error": "no HTTP URL known"}
        try:
            async with session.get(
                f"{url}/v1/status", headers=headers, timeout=aiohttp.ClientTimeout(total=1.0)
            ) as resp:
                st = await resp.json()
            tables = st.get("tables") or {}
            revisions = [t.get("applied_revision", 0) for t in [*tables.values(), *(st.get("agents") or {}).values()]]
            applied = min(revisions, default=0)  # its blade tables and its agents
            return node_id, _node_outcome(applied, bool(st.get("fences")), revision)
        except Exception as exc:  # noqa: BLE001 - unreachable is an outcome
            return node_id, {"outcome": "unreachable", "error": str(exc) or type(exc).__name__}

    pending = list(members)
    while True:
        results = await asyncio.gather(*(probe(a) for a in pending))
        still = []
        for address, (node_id, res) in zip(pending, results, strict=True):
            outcome[node_id] = res
            if res["outcome"] == "lagging":
                still.append(address)
        pending = still
        if not pending or loop.time() >= deadline:
            break
        await asyncio.sleep(WAIT_POLL_SECONDS)
    laggards = sorted(n for n, r in outcome.items() if r["outcome"] == "lagging")
    return outcome, laggards


def _node_outcome(applied: int, fenced: bool, revision: int) -> dict[str, Any]:
    if applied >= revision:
        return {"outcome": "applied", "applied_revision": applied}
    if fenced:
        return {"outcome": "fenced", "applied_revision": applied}
    return {"outcome": "lagging", "applied_revision": applied}


async def get_blade_table(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    blade = request.match_info["blade"]
    name = request.match_info["table"]
    tables = runtime.blades.get(blade)
    if tables is None:
        raise ApiError(404, "unknown_blade", f"no blade {blade!r}; blades: {', '.join(runtime.blades)}")
    table = tables.get(name)
    if table is None:
        raise ApiError(404, "unknown_table", f"{blade} has no table {name!r}; tables: {', '.join(tables)}")
    st = runtime.engine.status[name]
    return web.json_response(
        {"blade": blade, "table": name, "revision": st.applied_revision, "state": st.state, "rows": dict(table.rows())},
        headers={"X-Rdb-Revision": str(st.applied_revision)},
    )


async def post_resync(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    table = request.query.get("table") or None
    dry_run = bool_param(request, "dry_run")
    try:
        outcomes = await runtime.engine.resync(table, "manual", dry_run=dry_run)
    except UnknownTable:
        raise ApiError(404, "unknown_table", f"no blade table {table!r}; tables: {', '.join(runtime.tables)}") from None
    results = [o.to_dict() for o in outcomes]
    failed = [o for o in outcomes if not o.ok]
    if failed:
        first = failed[0]
        message = f"resync of {', '.join(o.table for o in failed)} failed: {first.table}: {first.cause}: {first.error}"
        raise ApiError(503, "resync_failed", message, {"dry_run": dry_run, "results": results})
    return web.json_response({"ok": True, "dry_run": dry_run, "results": results})


async def guard_consumer(request: web.Request) -> web.Response:
    """The fence guard for any consumer, e.g. a client application on this node: 200
    while it may serve (for ``vserver``, if given), 503 ``fenced`` with the reason."""
    consumer = request.match_info["consumer"]
    vserver = request.query.get("vserver") or None
    runtime = request.app[RUNTIME]
    policy = runtime.policy
    if consumer not in policy.consumers():
        raise ApiError(
            404, "unknown_consumer", f"the fencing policy has no consumer {consumer!r}; it has {policy.consumers()}"
        )
    await runtime.guard(consumer, vserver)
    tables = set(policy.dependencies.get(consumer, ())).union(*(r.tables for r in policy.scoped.get(consumer, ())))
    revision = runtime.applied_revision(tables)
    body = {"consumer": consumer, "kind": policy.kind(consumer), "vserver": vserver, "serving": True}
    return web.json_response({**body, "revision": revision}, headers={"X-Rdb-Revision": str(revision)})


async def get_policy(request: web.Request) -> web.Response:
    """The fencing policy this node runs (the document form of ``--fence-policy``)."""
    return web.json_response(policy_to_document(request.app[RUNTIME].policy))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/tables", list_tables)
    app.router.add_get("/v1/tables/{table}", list_rows)
    app.router.add_get("/v1/tables/{table}/{key}", get_row)
    app.router.add_put("/v1/tables/{table}/{key}", put_row)
    app.router.add_delete("/v1/tables/{table}/{key}", delete_row)
    app.router.add_get("/v1/blades/{blade}/{table}", get_blade_table)
    app.router.add_post("/v1/resync", post_resync)
    add_data_plane_routes(app.router, app[RUNTIME].app)
    app.router.add_get("/v1/guard/{consumer}", guard_consumer)
    app.router.add_get("/v1/policy", get_policy)
