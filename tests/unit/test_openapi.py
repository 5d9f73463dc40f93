"""The OpenAPI document is generated from the app (issue 9, point 8): it lists exactly
the routes the app registers, with the models the handlers validate with."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from node._config import NodeConfig
from node._http import build_app
from node._openapi import openapi, routes, undocumented
from node._runtime import BladeRuntime
from node.app import AppError, QueryParam
from tests.node_app import UnservedStore, app_for
from tests.ontap import TABLES


@pytest.fixture(params=[False, True], ids=["plain", "fault_injection"])
def app(request: pytest.FixtureRequest) -> web.Application:
    return app_for(fault_injection=request.param, api_token="t" if request.param else None)


def test_every_registered_route_is_documented_and_nothing_else(app: web.Application) -> None:
    assert undocumented(app) == []
    doc = openapi(app)
    registered = set(routes(app))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == registered
    # Cross-check against aiohttp directly, not through routes(): no GET route is missing.
    raw = {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource is not None}
    raw = {p for p in raw if p != "/ui" and not p.startswith("/ui/")}  # the dashboard is not the API
    assert raw <= {p for m, p in documented if m == "GET"}
    assert any(p.startswith("/v1/debug/") for p in doc["paths"]) == app[_config_key()].fault_injection


def _config_key() -> Any:
    from node._common import CONFIG

    return CONFIG


def test_what_the_old_document_left_out_is_there() -> None:
    doc = openapi(app_for(fault_injection=True))
    paths = doc["paths"]
    for path in ("/v1/snapshot", "/v1/restore", "/v1/tables/{table}", "/v1/debug/faults", "/v1/debug/tamper"):
        assert path in paths, path
    put_row = paths["/v1/tables/{table}/{key}"]["put"]
    assert put_row["requestBody"]["required"] is True
    row_refs = {r["$ref"].rsplit("/", 1)[1] for r in doc["components"]["schemas"]["TableRow"]["oneOf"]}
    assert row_refs == {f"Row_{name}" for name in TABLES}
    for name, table in TABLES.items():
        assert doc["components"]["schemas"][f"Row_{name}"]["properties"].keys() == table.model.model_fields.keys()
    for path, ops in paths.items():
        for method, op in ops.items():
            if "requestBody" in op:
                assert op["requestBody"]["required"] is True, (method, path)
                assert {"400", "408", "413", "415"} <= op["responses"].keys(), (method, path)

    def params(path: str, method: str) -> set[str]:
        return {p["name"] for p in paths[path][method]["parameters"]}

    assert {"prev_revision", "timeout", "wait", "Idempotency-Key"} <= params("/v1/tables/{table}/{key}", "put")
    assert {"consistency", "limit", "start_after"} <= params("/v1/tables/{table}", "get")
    assert "consistency" in params("/v1/tables/{table}/{key}", "get")
    assert {"Last-Event-ID", "from_revision", "prefix"} <= params("/v1/watch", "get")
    assert "after_seq" in params("/v1/events", "get")
    statuses = {
        ("/v1/kv/{key}", "delete"): {"404", "409", "422"},
        ("/v1/kv/{key}", "get"): {"404", "422"},
        ("/v1/kv", "get"): {"400", "422"},
        ("/v1/watch", "get"): {"410", "422"},
        ("/v1/events", "get"): {"422"},
        ("/v1/resync", "post"): {"404", "422", "503"},
        ("/v1/txn", "post"): {"400", "409", "413", "422"},
        ("/v1/tables/{table}/{key}", "put"): {"404", "409", "422", "504"},
        ("/v1/tables/{table}/{key}", "delete"): {"404", "409", "422"},
        ("/v1/restore", "post"): {"400", "413", "415", "422"},
    }
    for (path, method), want in statuses.items():
        assert want <= paths[path][method]["responses"].keys(), (path, method)


def test_the_error_body_is_described_once() -> None:
    doc = openapi(app_for())
    error = doc["components"]["responses"]["Error"]
    assert error["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert {"code", "message", "details", "applied"} <= detail["properties"].keys()
    for ops in doc["paths"].values():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if status != "200":
                    assert answer["$ref"] == "#/components/responses/Error"


def test_a_txn_key_must_not_be_empty() -> None:
    schemas = openapi(app_for())["components"]["schemas"]
    assert schemas["Compare"]["properties"]["key"]["minLength"] == 1
    assert schemas["TxnOp"]["properties"]["key"]["minLength"] == 1


def test_an_unregistered_route_would_be_reported() -> None:
    async def new_thing(request: web.Request) -> web.Response:
        return web.json_response({})

    app = app_for()
    app.router.add_get("/v1/new-thing", new_thing)
    assert undocumented(app) == [("GET", "/v1/new-thing")]
    assert "/v1/new-thing" in openapi(app)["paths"]  # listed anyway, with the common answers


def test_the_document_follows_the_loaded_app() -> None:
    """Running the proxy app, the document has its tables and its data plane, not ONTAP's."""
    from apps.proxy import app as proxy_app

    cfg = NodeConfig(id="n1", raft_address="127.0.0.1:1", http_address="127.0.0.1:2", data_dir="/x", secret="s")
    store: Any = UnservedStore()
    app = build_app(cfg, store, BladeRuntime("n1", store, app=proxy_app))
    doc = openapi(app)
    assert "/v1/data/proxy/route" in doc["paths"] and "/v1/data/nfs/mount" not in doc["paths"]
    params = {p["name"] for p in doc["paths"]["/v1/data/proxy/route"]["get"]["parameters"]}
    assert {"listener", "host", "path"} <= params
    rows = {name for name in doc["components"]["schemas"] if name.startswith("Row_")}
    assert rows == {"Row_listeners", "Row_pools", "Row_pool_members", "Row_routes"}
    assert undocumented(app) == []


def test_data_plane_parameters_are_documented_from_the_app_and_node_knows_no_app() -> None:
    """The ONTAP data plane's richer docs (an IP-address client, an optional user) come
    from the app's own declarations (``QueryParam``); node/ names no app's consumer."""
    doc = openapi(app_for())
    mount = {p["name"]: p for p in doc["paths"]["/v1/data/nfs/mount"]["get"]["parameters"]}
    assert mount["client"]["required"] and mount["client"]["example"] == "10.1.2.3"
    assert mount["client"]["schema"]["anyOf"] == [{"format": "ipv4"}, {"format": "ipv6"}]
    assert mount["vserver"]["schema"] == {"type": "string", "minLength": 1} and mount["vserver"]["example"] == "vs1"
    connect = doc["paths"]["/v1/data/cifs/connect"]["get"]
    assert connect["summary"].startswith("may this user connect")
    user = next(p for p in connect["parameters"] if p["name"] == "user")
    assert user["required"] is False and "Everyone" in user["description"]
    source = (Path(__file__).resolve().parents[2] / "node" / "_openapi.py").read_text()
    assert not re.search(r"\bnfs\b|\bcifs\b|vservers", source)


def test_an_app_documenting_a_parameter_twice_is_refused() -> None:
    from apps.proxy import app as proxy_app

    route = proxy_app.data_plane[0]
    twice = dataclasses.replace(route, docs=(QueryParam("host"), QueryParam("host")))
    with pytest.raises(AppError, match="documents a query parameter twice"):
        dataclasses.replace(proxy_app, data_plane=(twice,))
