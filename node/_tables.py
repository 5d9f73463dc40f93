"""Management tables: pydantic schemas, URL keys, storage keys and cross-table references.

Rows live in the revisioned key space at ``tables/<table>/<key>``, so txn, watch, CAS and
snapshots cover them. Schemas are checked here (readable 422s) before a write is
proposed; cross-table references are checked inside the state machine
(``rdb.Reference``), deterministically, so a violation is never half-applied.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from rdb import KeyValue, Reference

TABLE_PREFIX = "tables/"
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Protocol = Literal["nfs", "cifs", "iscsi"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Vserver(_Row):
    name: Name
    state: Literal["running", "stopped"] = "running"
    protocols: list[Protocol] = Field(default_factory=list)
    root_volume: Name | None = None


class Lif(_Row):
    name: Name
    vserver: Name
    address: str
    home_node: Name
    protocols: list[Protocol] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None


class Aggregate(_Row):
    name: Name
    home_node: Name
    size_mb: StrictInt = Field(gt=0)


class Volume(_Row):
    name: Name
    vserver: Name
    aggregate: Name
    size_mb: StrictInt = Field(gt=0)
    state: Literal["online", "offline"] = "online"
    junction_path: str = Field(pattern=r"^/[^\s]*$", max_length=1024)
    export_policy: Name = "default"


def _nfs_only() -> list[Protocol]:
    return ["nfs"]


class ExportRule(_Row):
    vserver: Name
    policy: Name
    index: StrictInt = Field(ge=1, le=65535)
    client_match: str
    access: Literal["ro", "rw"]
    protocols: list[Protocol] = Field(default_factory=lambda: _nfs_only())

    @field_validator("client_match")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8") from None


class AclEntry(_Row):
    user: str = Field(min_length=1, max_length=256)
    permission: Literal["read", "change", "full_control"]


class CifsShare(_Row):
    vserver: Name
    share: Name
    path: str = Field(pattern=r"^/[^\s]*$", max_length=1024)
    acl: list[AclEntry] = Field(default_factory=lambda: [AclEntry(user="Everyone", permission="full_control")])


@dataclass(frozen=True)
class TableDef:
    name: str
    model: type[_Row]
    key_of: Callable[[dict[str, Any]], str]
    references: tuple[tuple[str, str], ...] = ()  # (field, parent table)

    @property
    def prefix(self) -> str:
        return f"{TABLE_PREFIX}{self.name}/"

    def storage_key(self, key: str) -> str:
        return self.prefix + key


def _by_name(row: dict[str, Any]) -> str:
    return str(row["name"])


TABLES: dict[str, TableDef] = {
    t.name: t
    for t in (
        TableDef("vservers", Vserver, _by_name),
        TableDef("lifs", Lif, _by_name, (("vserver", "vservers"),)),
        TableDef("aggregates", Aggregate, _by_name),
        TableDef("volumes", Volume, _by_name, (("vserver", "vservers"), ("aggregate", "aggregates"))),
        TableDef(
            "export_rules",
            ExportRule,
            lambda r: f"{r['vserver']}:{r['policy']}:{r['index']}",
            (("vserver", "vservers"),),
        ),
        TableDef("cifs_shares", CifsShare, lambda r: f"{r['vserver']}:{r['share']}", (("vserver", "vservers"),)),
    )
}

#: The references the state machine enforces.
REFERENCES: tuple[Reference, ...] = tuple(
    Reference(child_prefix=t.prefix, field=field, parent_prefix=TABLES[parent].prefix)
    for t in TABLES.values()
    for field, parent in t.references
)


class RowKeyMismatch(ValueError):
    """The body's identifying fields disagree with the URL key."""


def validate_row(table: TableDef, key: str, body: Any) -> dict[str, Any]:
    """Validate ``body`` for ``table`` under URL ``key``.

    Raises pydantic ``ValidationError`` (schema) or ``RowKeyMismatch``.
    """
    row = table.model.model_validate(body).model_dump(mode="json")
    expected = table.key_of(row)
    if expected != key:
        raise RowKeyMismatch(f"the body identifies row {expected!r} but the URL names {key!r}")
    return row


def split_storage_key(key: str) -> tuple[TableDef, str] | None:
    """``tables/<t>/<k>`` -> (table, k); None for keys outside the management tables."""
    if not key.startswith(TABLE_PREFIX):
        return None
    table_name, sep, row_key = key[len(TABLE_PREFIX) :].partition("/")
    table = TABLES.get(table_name)
    if table is None or not sep or not row_key:
        return None
    return table, row_key


def json_schemas() -> dict[str, Any]:
    return {
        name: {
            "schema": t.model.model_json_schema(),
            "key": "name"
            if t.key_of is _by_name
            else ("<vserver>:<policy>:<index>" if name == "export_rules" else "<vserver>:<share>"),
            "references": [{"field": f, "table": p} for f, p in t.references],
        }
        for name, t in TABLES.items()
    }


def key_problem(key: str) -> str | None:
    """Why the HTTP API cannot serve ``key``, or None: a newline, which its URL route
    (``{key:.+}``) cannot match, so the key could be written but never read or deleted."""
    if "\n" in key:
        return f"key {key[:80]!r} contains a newline"
    return None


def restore_problem(entries: Iterable[KeyValue]) -> str | None:
    """The first entry of a snapshot this API could not serve, described, or None: a
    value that is not JSON (bytes, NaN, Infinity, non-string map keys), a key it cannot route, a key under
    ``tables/`` outside the known tables, or a table row that fails its schema or is not
    in the form the API stores."""
    for kv in entries:
        problem = key_problem(kv.key)
        if problem is not None:
            return problem
        try:
            as_json = json.dumps(kv.value, allow_nan=False)
        except (TypeError, ValueError):
            return f"the value of {kv.key[:80]!r} is not JSON (bytes, NaN or Infinity)"
        if json.loads(as_json) != kv.value:
            return f"the value of {kv.key[:80]!r} is not JSON (a map with keys that are not strings)"
        if not kv.key.startswith(TABLE_PREFIX):
            continue
        split = split_storage_key(kv.key)
        if split is None:
            return f"{kv.key[:80]!r} is not under a known management table"
        table, row_key = split
        try:
            row = validate_row(table, row_key, kv.value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "row"
            return f"{table.name} row {row_key!r}: {where}: {first['msg']}"
        except RowKeyMismatch as exc:
            return f"{table.name} row {row_key!r}: {exc}"
        if row != kv.value:
            return f"{table.name} row {row_key!r} is not in the form the API stores (GET /v1/snapshot makes one)"
    return None
