"""Request and response models of the HTTP API (pydantic); ``node._openapi`` builds the
document from them and from the app's routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A key in a body: at least one character (the byte limit, 1 KiB in UTF-8, and the
#: reserved ``_rdb/`` prefix are checked by the handlers: JSON Schema cannot say them).
Key = Annotated[str, Field(min_length=1)]


class PutBody(_Strict):
    value: JsonValue = Field(
        description="any JSON value: at most 1 MiB in its stored form (msgpack), at most 100 arrays/objects deep"
    )


class Compare(_Strict):
    key: Key
    target: Literal["mod_revision", "create_revision", "version", "value"] = "mod_revision"
    result: Literal["==", "!=", "<", ">"] = "=="
    value: JsonValue = None


class TxnOp(_Strict):
    op: Literal["get", "put", "delete"]
    key: Key
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


class TxnAnswer(BaseModel):
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]


class RestoreAnswer(BaseModel):
    revision: int
    restored_keys: int | None


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_found, cas_conflict, no_quorum")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    applied: bool | Literal["unknown"] | None = Field(
        default=None,
        description="on writes: false, never applied (retry freely); unknown, may still apply (retry with the"
        " same Idempotency-Key)",
    )


class ErrorBody(BaseModel):
    error: ErrorDetail
