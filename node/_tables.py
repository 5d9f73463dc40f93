"""The loaded app's management tables as a registry: schemas, URL keys, storage keys and
cross-table references (``TableRegistry``; the tables themselves come from the app).

Rows live in the revisioned key space at ``tables/<table>/<key>``, so txn, watch, CAS and
snapshots cover them. Schemas are checked here (readable 422s) before a write is
proposed; cross-table references are checked inside the state machine
(``rdb.Reference``), deterministically, so a violation is never half-applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from node.app import App, Table
from rdb import KeyValue, Reference

TABLE_PREFIX = "tables/"


@dataclass(frozen=True)
class TableDef:
    """A management table of the loaded app, with its place in the key space."""

    spec: Table

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model(self) -> type[BaseModel]:
        return self.spec.model

    @property
    def references(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.spec.references.items())

    def key_of(self, row: dict[str, Any]) -> str:
        return self.spec.key_of(row)

    @property
    def prefix(self) -> str:
        return f"{TABLE_PREFIX}{self.name}/"

    def storage_key(self, key: str) -> str:
        return self.prefix + key


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


def key_problem(key: str) -> str | None:
    """Why the HTTP API cannot serve ``key``, or None: a newline, which its URL route
    (``{key:.+}``) cannot match, so the key could be written but never read or deleted."""
    if "\n" in key:
        return f"key {key[:80]!r} contains a newline"
    return None


class TableRegistry:
    """The management tables of one app, by name (read-only after construction)."""

    def __init__(self, app: App) -> None:
        self.tables: Mapping[str, TableDef] = {t.name: TableDef(t) for t in app.tables}
        #: The references the state machine enforces.
        self.references: tuple[Reference, ...] = tuple(
            Reference(child_prefix=t.prefix, field=f, parent_prefix=self.tables[parent].prefix)
            for t in self.tables.values()
            for f, parent in t.references
        )

    def get(self, name: str) -> TableDef | None:
        return self.tables.get(name)

    def __getitem__(self, name: str) -> TableDef:
        return self.tables[name]

    def __iter__(self) -> Any:
        return iter(self.tables)

    def split_storage_key(self, key: str) -> tuple[TableDef, str] | None:
        """``tables/<t>/<k>`` -> (table, k); None for keys outside the management tables."""
        if not key.startswith(TABLE_PREFIX):
            return None
        table_name, sep, row_key = key[len(TABLE_PREFIX) :].partition("/")
        table = self.tables.get(table_name)
        if table is None or not sep or not row_key:
            return None
        return table, row_key

    def json_schemas(self) -> dict[str, Any]:
        return {
            name: {
                "schema": t.model.model_json_schema(),
                "key": t.spec.key_doc,
                "references": [{"field": f, "table": p} for f, p in t.references],
            }
            for name, t in self.tables.items()
        }

    def restore_problem(self, entries: Iterable[KeyValue]) -> str | None:
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
            split = self.split_storage_key(kv.key)
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
