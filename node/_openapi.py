"""The OpenAPI 3.1 document, generated from the application itself so it cannot drift.

``openapi(app)`` walks the routes registered in ``app`` (so ``/v1/debug/*`` is there
only when fault injection mounts it) and describes each with the pydantic models its
handler validates with, and the management tables' row models from the registry the
table handlers use (``_table_registry``). An operation is looked up in ``OPERATIONS``;
a route without an entry is still listed, with the common answers, and
``undocumented(app)`` names it (a test keeps that list empty).

The error body is described once (``components.responses``) and referenced by every
status an operation can answer with an error: the operation's own, plus what every
request can get (``COMMON``) and what every request with a body can get (``BODY``).

Threading: pure; called on the asyncio loop, once per app (the document is cached).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from node import _debug
from node._common import CONFIG, MAX_BODY_BYTES, MAX_LIST_LIMIT, RUNTIME
from node._models import (
    Entry,
    ErrorBody,
    ListAnswer,
    MemberBody,
    PutBody,
    RestoreAnswer,
    RevisionAnswer,
    TxnAnswer,
    TxnBody,
)
from rdb import MAX_VALUE_BYTES

JSON = "application/json"

#: Every request can get these: a malformed request, a path breaking the %-escape rule or
#: an empty parameter (400), no or a wrong bearer token when one is set (401; listed only
#: then, and never on /healthz), a node removed from the cluster (410; the few calls it
#: still serves never send it), a transfer coding other than chunked (501), no quorum or
#: an internal error (503).
COMMON = {
    400: "malformed request",
    401: "bearer token required",
    410: "this node was removed from the cluster",
    501: "unsupported transfer coding",
    503: "unavailable",
}
#: ...and every request with a body these.
BODY = {
    400: "the body is not valid JSON (or not valid in its Content-Encoding)",
    408: "the body did not arrive within the body timeout",
    413: f"the body is over {MAX_BODY_BYTES} bytes, or a value over {MAX_VALUE_BYTES} bytes stored",
    415: "unsupported Content-Encoding (identity, gzip and deflate are)",
}

_MAX_INT = 10**18 - 1  # what int_param parses (18 digits)


def _q(
    name: str, schema: dict[str, Any], description: str = "", required: bool = False, example: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        out["description"] = description
    if example is not None:
        out["example"] = example
    return out


def _path(
    name: str, schema: dict[str, Any] | None = None, description: str = "", example: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}
    if description:
        out["description"] = description
    if example is not None:
        out["example"] = example
    return out


KEY_RULE = (
    "the key, percent-encoded as UTF-8: every %XX is decoded (%2F is '/', %25 is '%'), '+' is itself;"
    " a '%' not followed by two hex digits, or escapes that are not UTF-8, answer 400 bad_path"
)
KEY = _path("key", {"type": "string", "minLength": 1, "pattern": "^[^\\n\\x00]+$"}, KEY_RULE, "app/config")
CONSISTENCY = _q("consistency", {"type": "string", "enum": ["linearizable", "serializable"]})
PREV = _q(
    "prev_revision",
    {"type": "integer", "minimum": 0, "maximum": _MAX_INT},
    "compare-and-set: the key's mod_revision must be this (0: it must not exist)",
)
IDEM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "names one request: a retry with it is applied once; reused for another request, 422",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x20-\\x7e]+$"},
}
LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT})
WAIT = _q("wait", {"type": "string", "enum": ["applied"]}, "answer once every unfenced node's blade tables reflect it")
TIMEOUT = _q("timeout", {"type": "number", "exclusiveMinimum": 0, "maximum": 120}, "seconds, with wait=applied")
NONEMPTY = {"type": "string", "minLength": 1}
#: An optional string filter the data plane and guard read: empty is the same as absent.
OPTIONAL = {"type": "string", "description": "empty is the same as leaving it out"}


@dataclass(frozen=True)
class Op:
    """One operation: what its handler reads and every status it answers with."""

    summary: str
    params: tuple[dict[str, Any], ...] = ()
    body: str | None = None  # a schema name in components, or "octet-stream"
    ok: str | None = None  # the 200 answer's schema name, or None for any JSON object
    ok_type: str = JSON
    errors: Mapping[int, str] = field(default_factory=dict)
    example: Any = None  # of the body


def _ops(app: web.Application) -> dict[tuple[str, str], Op]:
    runtime = app[RUNTIME]
    blades = sorted(runtime.blades)
    blade_tables = sorted(runtime.tables)
    consumers = sorted(runtime.policy.consumers())
    tables = list(_table_registry(app))
    table = _path("table", {"type": "string", "enum": tables}, example=tables[0] if tables else None)
    table_errors = {404: "no such table, or no such row", 422: "bad parameter"}
    write = {409: "compare-and-set conflict, or a row still referred to", 422: "invalid, or a missing reference"}
    return {
        ("GET", "/v1/kv/{key}"): Op(
            "read a key", (KEY, CONSISTENCY), ok="Entry", errors={404: "no such key", 422: "bad key or parameter"}
        ),
        ("PUT", "/v1/kv/{key}"): Op(
            "write a key",
            (KEY, PREV, IDEM),
            body="PutBody",
            ok="RevisionAnswer",
            errors=write,
            example={"value": {"replicas": 3, "enabled": True}},
        ),
        ("DELETE", "/v1/kv/{key}"): Op(
            "delete a key", (KEY, PREV, IDEM), ok="RevisionAnswer", errors={404: "no such key", **write}
        ),
        ("GET", "/v1/kv"): Op(
            "list keys in key order",
            (_q("prefix", {"type": "string"}), LIMIT, _q("start_after", {"type": "string"}), CONSISTENCY),
            ok="ListAnswer",
            errors={422: "bad parameter"},
        ),
        ("POST", "/v1/txn"): Op(
            "compare, then run one branch atomically",
            (IDEM,),
            body="TxnBody",
            ok="TxnAnswer",
            errors=write,
            example={
                "compare": [{"key": "app/config", "target": "version", "result": ">", "value": 0}],
                "success": [{"op": "get", "key": "app/config"}],
                "failure": [{"op": "put", "key": "app/config", "value": {"replicas": 1}}],
            },
        ),
        ("GET", "/v1/watch"): Op(
            "Server-Sent Events of changes from a revision",
            (
                _q("prefix", {"type": "string"}),
                _q(
                    "from_revision",
                    {"type": "integer", "minimum": 1, "maximum": _MAX_INT},
                    "at most 1000000 beyond the node's revision (422 otherwise, at once)",
                ),
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
            ),
            ok_type="text/event-stream",
            errors={410: "history is compacted past from_revision", 422: "bad parameter"},
        ),
        ("GET", "/v1/status"): Op("this node"),
        ("GET", "/v1/cluster"): Op("every member's status"),
        ("POST", "/v1/cluster/members"): Op(
            "add a learner as a voter",
            body="MemberBody",
            errors={
                409: "already a member, or another change is pending",
                422: "invalid or unreachable member",
                503: "the learner did not catch up, or unavailable",
            },
        ),
        ("DELETE", "/v1/cluster/members/{id}"): Op(
            "remove a member",
            (_path("id"),),
            errors={404: "no such member", 409: "the last member, or another change is pending"},
        ),
        ("POST", "/v1/cluster/removed"): Op(
            "a member tells this node it was removed (believed once that member confirms)",
            body="RemovedNotice",
            errors={409: "the member does not confirm", 422: "not a member this node knows", 503: "cannot check"},
        ),
        ("GET", "/v1/agents"): Op("every agent this node expects: state, applied revision, lag"),
        ("GET", "/v1/agents/{name}/load"): Op(
            "an agent's blade tables on this node at one revision, and the cursor its stream starts from",
            (_path("name"),),
            errors={404: "this node expects no such agent", 503: "a table it holds cannot be trusted now"},
        ),
        ("GET", "/v1/agents/{name}/stream"): Op(
            "Server-Sent Events: the agent's changes in revision order from a load's cursor",
            (
                _path("name"),
                {**_q("cursor", {"type": "integer", "minimum": 0, "maximum": _MAX_INT}), "required": True},
                {**_q("epoch", {"type": "integer", "minimum": 0, "maximum": _MAX_INT}), "required": True},
            ),
            ok_type="text/event-stream",
            errors={404: "this node expects no such agent", 422: "bad parameter"},
        ),
        ("POST", "/v1/agents/{name}/report"): Op(
            "an agent's heartbeat: its applied revision, state and failures",
            (_path("name"),),
            body="AgentReport",
            errors={404: "this node expects no such agent", 422: "not a report"},
            example={"state": "ok", "applied_revision": 1},
        ),
        ("GET", "/healthz"): Op("the process is up"),
        ("GET", "/readyz"): Op("joined, caught up and resynced"),
        ("GET", "/metrics"): Op("Prometheus text format", ok_type="text/plain"),
        ("GET", "/openapi.json"): Op("this document"),
        ("GET", "/v1/events"): Op(
            "resync failures, fences and unfences on this node",
            (_q("after_seq", {"type": "integer", "minimum": 0, "maximum": _MAX_INT}),),
            errors={422: "bad parameter"},
        ),
        ("GET", "/v1/snapshot"): Op("a linearizable backup", ok_type="application/octet-stream"),
        ("POST", "/v1/restore"): Op(
            "replace the key space with a backup",
            body="octet-stream",
            ok="RestoreAnswer",
            errors={400: "empty body", 422: "invalid_snapshot: what the write path or the tables would refuse"},
        ),
        ("GET", "/v1/tables"): Op("the management tables and their JSON schemas"),
        ("GET", "/v1/tables/{table}"): Op(
            "a table's rows in key order",
            (table, LIMIT, _q("start_after", {"type": "string"}), CONSISTENCY),
            errors=table_errors,
        ),
        ("GET", "/v1/tables/{table}/{key}"): Op("one row", (table, _path("key"), CONSISTENCY), errors=table_errors),
        ("PUT", "/v1/tables/{table}/{key}"): Op(
            "write a row (the body must name the URL's key)",
            (table, _path("key"), PREV, WAIT, TIMEOUT, IDEM),
            body="TableRow",
            ok="RevisionAnswer",
            errors={**table_errors, **write, 504: "committed, not applied everywhere within timeout"},
        ),
        ("DELETE", "/v1/tables/{table}/{key}"): Op(
            "delete a row",
            (table, _path("key"), PREV, WAIT, TIMEOUT, IDEM),
            ok="RevisionAnswer",
            errors={**table_errors, **write, 504: "committed, not applied everywhere within timeout"},
        ),
        ("GET", "/v1/blades/{blade}/{table}"): Op(
            "a blade table's rows and the revision they reflect",
            (
                _path("blade", {"type": "string", "enum": blades}),
                _path("table", {"type": "string", "enum": blade_tables}),
            ),
            errors={404: "no such blade or table"},
        ),
        ("POST", "/v1/resync"): Op(
            "a manual resync, or its plan",
            (
                _q("table", {"type": "string", "enum": ["", *blade_tables]}, "empty or left out: every table"),
                _q("dry_run", {"type": "boolean"}),
            ),
            errors={404: "no such blade table", 422: "bad parameter", 503: "a resync failed, or unavailable"},
        ),
        ("GET", "/v1/guard/{consumer}"): Op(
            "may this consumer serve",
            (
                _path("consumer", {"type": "string", "enum": consumers}, example=consumers[0] if consumers else None),
                _q("vserver", OPTIONAL, example="vs1"),
            ),
            errors={404: "no such consumer", 503: "fenced, or unavailable"},
        ),
        ("GET", "/v1/policy"): Op("the fencing policy this node runs"),
        ("GET", "/v1/debug/timings"): Op(
            "apply times (fault injection only)",
            (_q("since", {"type": "integer", "minimum": 0, "maximum": _MAX_INT}),),
            errors={422: "bad parameter"},
        ),
        ("POST", "/v1/debug/faults"): Op(
            "inject a resync fault", body="FaultBody", errors={404: "no such blade table", 422: "invalid"}
        ),
        ("DELETE", "/v1/debug/faults"): Op("clear every fault"),
        ("POST", "/v1/debug/tamper"): Op(
            "change a blade row behind the engine's back",
            body="TamperBody",
            errors={404: "no such blade table", 422: "invalid"},
        ),
        ("POST", "/v1/debug/delay"): Op("slow the resync worker down", body="DelayBody", errors={422: "invalid"}),
    }


def _table_registry(app: web.Application) -> Mapping[str, Any]:
    """name -> table definition (``.model``: the row's pydantic model): the loaded app's
    registry, the one the table handlers (``node._mgmt``) look tables up in."""
    return app[RUNTIME].registry.tables


def _data_plane_ops(app: web.Application) -> dict[tuple[str, str], Op]:
    """The loaded app's data-plane operations, from its declarations: the required
    parameters (a non-empty string unless documented otherwise), then the optional ones
    it documents."""
    ops = {}
    for d in app[RUNTIME].app.data_plane:
        docs = {q.name: q for q in d.docs}
        required = [_data_param(name, docs.get(name), required=True) for name in d.params]
        optional = [_data_param(q.name, q, required=False) for q in d.docs if q.name not in d.params]
        params = required + optional
        ops[("GET", f"/v1/data/{d.consumer}/{d.operation}")] = Op(
            d.summary or f"{d.consumer} {d.operation}, answered from blade tables only",
            tuple(params),
            errors={422: "bad parameter", 503: "fenced, or unavailable"},
        )
    return ops


def _data_param(name: str, doc: Any, *, required: bool) -> dict[str, Any]:
    """A data-plane query parameter from the app's ``QueryParam`` (or None: a bare name)."""
    default = NONEMPTY if required else OPTIONAL
    if doc is None:
        return _q(name, default, required=required)
    schema = dict(doc.schema) if doc.schema is not None else default
    return _q(name, schema, doc.description, required=required, example=doc.example)


def _schemas(app: web.Application) -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {
        m.__name__: m
        for m in (PutBody, TxnBody, MemberBody, Entry, RevisionAnswer, ListAnswer, TxnAnswer, RestoreAnswer, ErrorBody)
    }
    models.update({m.__name__: m for m in (_debug.FaultBody, _debug.TamperBody, _debug.DelayBody)})
    rows = {f"Row_{name}": t.model for name, t in _table_registry(app).items()}
    models.update(rows)
    schemas: dict[str, Any] = {}
    for name, model in models.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    schemas["AgentReport"] = {
        "type": "object",
        "properties": {
            "state": {"type": "string", "enum": ["ok", "failed", "loading"]},
            "applied_revision": {"type": "integer", "minimum": 0},
            "drift": {"type": "integer", "minimum": 0},
            "error": {"type": "string"},
        },
        "required": ["state", "applied_revision"],
    }
    schemas["RemovedNotice"] = {
        "type": "object",
        "properties": {"by": {"type": "string", "description": "the member that removed this node"}},
        "required": ["by"],
    }
    schemas["TableRow"] = {
        "description": "a row of the table in the path (GET /v1/tables has each table's schema)",
        "oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in rows],
    }
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(method: str, op: Op) -> dict[str, Any]:
    errors: dict[int, str] = dict(COMMON)
    if op.body is not None:
        errors.update(BODY)
    if any(p["in"] == "path" for p in op.params):
        # e.g. a key holding a newline, which no route matches
        errors[404] = "no such resource, or a path no route matches"
    errors.update(op.errors)
    ok_schema = _ref(op.ok) if op.ok else ({"type": "object"} if op.ok_type == JSON else {"type": "string"})
    responses: dict[str, Any] = {"200": {"description": op.summary, "content": {op.ok_type: {"schema": ok_schema}}}}
    for status in sorted(errors):
        responses[str(status)] = {"$ref": "#/components/responses/Error", "description": errors[status]}
    out: dict[str, Any] = {
        "summary": op.summary,
        "parameters": list(op.params),
        "responses": responses,
    }
    if op.body == "octet-stream":
        content = {"application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}}}
        out["requestBody"] = {"required": True, "content": content}
    elif op.body is not None:
        media: dict[str, Any] = {"schema": _ref(op.body)}
        if op.example is not None:
            media["example"] = op.example
        out["requestBody"] = {"required": True, "content": {JSON: media}}
    return out


def routes(app: web.Application) -> Iterable[tuple[str, str]]:
    """(method, path template) of every route registered in ``app``; HEAD, which aiohttp
    adds to every GET, is left out (it answers like the GET, without a body), and so is
    the dashboard under /ui."""
    seen = set()
    for route in app.router.routes():
        method = route.method.upper()
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if method in ("HEAD", "*") or not path or path == "/ui" or path.startswith("/ui/"):
            continue  # /ui is the dashboard (node._ui: a page and its own data), not the API
        if (method, path) not in seen:
            seen.add((method, path))
            yield method, path


def undocumented(app: web.Application) -> list[tuple[str, str]]:
    ops = {**_data_plane_ops(app), **_ops(app)}
    return [r for r in routes(app) if r not in ops]


def openapi(app: web.Application) -> dict[str, Any]:
    """The document for ``app``'s routes."""
    ops = {**_data_plane_ops(app), **_ops(app)}
    token = bool(app[CONFIG].api_token)
    paths: dict[str, dict[str, Any]] = {}
    for method, path in routes(app):
        op = ops.get((method, path)) or Op(f"{method} {path}")
        operation = _operation(method, op)
        operation["operationId"] = f"{method.lower()}{path.replace('/', '_').replace('{', '').replace('}', '')}"
        if not token or path == "/healthz":
            operation["security"] = []  # open: no token configured, or the liveness probe
            operation["responses"].pop("401")
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rdbsync",
            "version": "1",
            "description": "Every answer carries X-Rdb-Revision. Errors are the Error response. Any path answers"
            " 405 method_not_allowed (with Allow) to a method it does not have, and 404 no_route where no route"
            " matches. Keys in paths: " + KEY_RULE + ".",
        },
        "components": {
            "schemas": _schemas(app),
            "responses": {
                "Error": {"description": "an error", "content": {JSON: {"schema": _ref("ErrorBody")}}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
