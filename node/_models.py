"""Request and response models of the HTTP API (pydantic). ``openapi()`` is built from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PutBody(_Strict):
    value: JsonValue = Field(description="any JSON value, at most 1 MiB encoded")


class Compare(_Strict):
    key: str
    target: Literal["mod_revision", "create_revision", "version", "value"] = "mod_revision"
    result: Literal["==", "!=", "<", ">"] = "=="
    value: JsonValue = None


class TxnOp(_Strict):
    op: Literal["get", "put", "delete"]
    key: str
    value: JsonValue = None


class TxnBody(_Strict):
    compare: list[Compare] = Field(default_factory=list)
    success: list[TxnOp] = Field(default_factory=list)
    failure: list[TxnOp] = Field(default_factory=list)


class MemberBody(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # Checked by rdb.check_new_member (422 invalid_member): syntax, DNS, aliases.
    raft_address: str
    http_url: str = Field(pattern=r"^https?://\S+$")


class Entry(BaseModel):
    key: str
    value: JsonValue
    create_revision: int
    mod_revision: int
    version: int


class RevisionAnswer(BaseModel):
    revision: int


class ListAnswer(BaseModel):
    kvs: list[Entry]
    more: bool
    revision: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document, with schemas generated from the models above."""
    models: list[type[BaseModel]] = [
        PutBody,
        Compare,
        TxnOp,
        TxnBody,
        MemberBody,
        Entry,
        RevisionAnswer,
        ListAnswer,
        ErrorBody,
    ]
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    def ref(name: str) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

    err = {"description": "error", **ref("ErrorBody")}
    key = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
    consistency = {
        "name": "consistency",
        "in": "query",
        "schema": {"type": "string", "enum": ["linearizable", "serializable"], "default": "linearizable"},
    }
    prev = {"name": "prev_revision", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    idem = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 128}}
    table = {"name": "table", "in": "path", "required": True, "schema": {"type": "string"}}
    wait = {"name": "wait", "in": "query", "schema": {"type": "string", "enum": ["applied"]}}

    def query(name: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": True, "schema": {"type": "string"}}

    paths: dict[str, Any] = {
        "/v1/kv/{key}": {
            "get": {
                "parameters": [key, consistency],
                "responses": {"200": {"description": "entry", **ref("Entry")}, "404": err, "503": err},
            },
            "put": {
                "parameters": [key, prev, idem],
                "requestBody": ref("PutBody"),
                "responses": {
                    "200": {"description": "stored", **ref("RevisionAnswer")},
                    "409": err,
                    "413": err,
                    "422": err,
                    "503": err,
                },
            },
            "delete": {
                "parameters": [key, prev, idem],
                "responses": {
                    "200": {"description": "deleted", **ref("RevisionAnswer")},
                    "404": err,
                    "409": err,
                    "503": err,
                },
            },
        },
        "/v1/kv": {
            "get": {
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                    {"name": "start_after", "in": "query", "schema": {"type": "string"}},
                    consistency,
                ],
                "responses": {"200": {"description": "entries", **ref("ListAnswer")}, "503": err},
            }
        },
        "/v1/txn": {
            "post": {
                "parameters": [idem],
                "requestBody": ref("TxnBody"),
                "responses": {"200": {"description": "txn result"}, "422": err, "503": err},
            }
        },
        "/v1/watch": {
            "get": {
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "from_revision", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                ],
                "responses": {"200": {"description": "text/event-stream of changes"}, "410": err},
            }
        },
        "/v1/status": {"get": {"responses": {"200": {"description": "this node"}}}},
        "/v1/cluster": {"get": {"responses": {"200": {"description": "every member"}}}},
        "/v1/cluster/members": {
            "post": {
                "requestBody": ref("MemberBody"),
                "responses": {"200": {"description": "added"}, "409": err, "410": err, "422": err, "503": err},
            }
        },
        "/v1/cluster/members/{id}": {
            "delete": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "removed"}, "404": err, "409": err, "410": err, "503": err},
            }
        },
        "/healthz": {"get": {"responses": {"200": {"description": "process is up"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "ready"}, "503": err}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text format"}}}},
        "/v1/tables": {"get": {"responses": {"200": {"description": "management tables and their JSON schemas"}}}},
        "/v1/tables/{table}/{key}": {
            "get": {"parameters": [table, key], "responses": {"200": {"description": "row"}, "404": err}},
            "put": {
                "parameters": [table, key, wait, idem],
                "responses": {"200": {"description": "stored"}, "409": err, "422": err, "503": err, "504": err},
            },
            "delete": {
                "parameters": [table, key, wait, idem],
                "responses": {"200": {"description": "deleted"}, "404": err, "409": err, "503": err},
            },
        },
        "/v1/blades/{blade}/{table}": {
            "get": {
                "parameters": [{"name": "blade", "in": "path", "required": True, "schema": {"type": "string"}}, table],
                "responses": {"200": {"description": "blade rows and the revision they reflect"}, "404": err},
            }
        },
        "/v1/resync": {
            "post": {
                "parameters": [
                    {"name": "table", "in": "query", "schema": {"type": "string"}},
                    {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {"200": {"description": "the plan, and what was applied"}, "404": err},
            }
        },
        "/v1/data/nfs/mount": {
            "get": {
                "parameters": [query("vserver"), query("path"), query("client")],
                "responses": {"200": {"description": "rw, ro or denied"}, "422": err, "503": err},
            }
        },
        "/v1/data/cifs/connect": {
            "get": {
                "parameters": [query("vserver"), query("share"), {**query("user"), "required": False}],
                "responses": {"200": {"description": "rw, ro or denied"}, "422": err, "503": err},
            }
        },
        "/v1/guard/{consumer}": {
            "get": {
                "parameters": [
                    {"name": "consumer", "in": "path", "required": True, "schema": {"type": "string"}},
                    {**query("vserver"), "required": False},
                ],
                "responses": {"200": {"description": "the consumer may serve"}, "404": err, "503": err},
            }
        },
        "/v1/policy": {"get": {"responses": {"200": {"description": "the fencing policy this node runs"}}}},
        "/v1/events": {"get": {"responses": {"200": {"description": "resync failures, fences and unfences"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "rdbsync", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }
