"""The loaded app's blade tables on this node: rows in memory, each a projection of
committed state declared by the app (``node.app.BladeTable``), registered with the
generic resync engine.

The incremental "affected keys" come from the declaration: a change to a source row
re-projects that row; a change to a parent joined through a reference re-projects the
rows that reference it (found through the state machine's reference index).

Threading: rows are read and changed on the node's asyncio loop only; projections are
pure functions of a ``resync.Reader`` and run under the store's read lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from node._exceptions import InjectedFault
from node._tables import TableDef, TableRegistry
from node.app import App, UndeclaredRead
from node.app import BladeTable as BladeSpec
from rdb import Event
from resync import Action, Reader, Row


@dataclass
class Fault:
    mode: str  # "error" | "hang"
    remaining: int | None  # actions left to fail; None: until cleared


class ProjectedTable:
    """One blade table: rows in memory, a projection, secondary indexes, fault hooks."""

    def __init__(self, spec: BladeSpec, registry: TableRegistry, node_id: str) -> None:
        self.name = spec.name
        self.blade = spec.blade
        self.source: TableDef = registry[spec.source]
        self.node_id = node_id
        self._keep = spec.where
        self._transform = spec.transform
        #: join field -> parent table, for the fields the projection reads through.
        self._joins = {f: registry[dict(self.source.references)[f]] for f in spec.joins}
        self._parent_prefixes = tuple(sorted({t.prefix for t in self._joins.values()}))
        #: Its rows come from its source table's rows and the parents they join.
        self.watches = (self.source.prefix, *self._parent_prefixes)
        self._rows: dict[str, Row] = {}
        self._index_fields = tuple(spec.index)
        self._indexes: dict[str, dict[Any, set[str]]] = {f: {} for f in spec.index}
        self.fault: Fault | None = None
        self.apply_delay = 0.0
        #: Called with (table, key, row or None) after every row change (agents' change log).
        self.on_change: Callable[[str, str, Row | None], None] | None = None

    # ----------------------------------------------------------- projection

    def _project(self, ctx: _Context, row: Any) -> Row | None:
        if not isinstance(row, dict):
            return None
        if self._keep is not None and not self._keep(ctx, row):
            return None
        return self._transform(ctx, row) if self._transform is not None else row

    def desired_all(self, reader: Reader) -> dict[str, Row]:
        kvs, _ = reader.range(self.source.prefix)
        start = len(self.source.prefix)
        ctx = _Context(self, reader)
        out: dict[str, Row] = {}
        for kv in kvs:
            row = self._project(ctx, kv.value)
            if row is not None:
                out[kv.key[start:]] = row
        return out

    def affected(self, reader: Reader, events: Sequence[Event]) -> set[str]:
        prefix = self.source.prefix
        keys: set[str] = set()
        for event in events:
            key = event.kv.key
            if key.startswith(prefix):
                keys.add(key[len(prefix) :])
            elif self._parent_prefixes and key.startswith(self._parent_prefixes):
                # A parent changed (say an aggregate's home node): re-project its children.
                keys.update(c[len(prefix) :] for c in reader.children(key) if c.startswith(prefix))
        return keys

    def desired(self, reader: Reader, key: str) -> Row | None:
        kv = reader.get(self.source.prefix + key)
        return None if kv is None else self._project(_Context(self, reader), kv.value)

    # ----------------------------------------------------------- rows

    def rows(self) -> Mapping[str, Row]:
        return self._rows

    def lookup(self, field: str, value: Any) -> list[Row]:
        """Rows whose ``field`` equals ``value`` (an indexed field)."""
        return [self._rows[k] for k in sorted(self._indexes[field].get(value, ()))]

    async def apply(self, actions: Sequence[Action]) -> None:
        if self.apply_delay:
            await asyncio.sleep(self.apply_delay)
        if not actions:
            await self._check_fault()  # a resync with nothing to change still fails
        for action in actions:
            await self._check_fault()
            if action.kind == "remove":
                self._set(action.key, None)
            else:
                assert action.row is not None
                self._set(action.key, action.row)

    async def _check_fault(self) -> None:
        fault = self.fault
        if fault is None:
            return
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.fault = None
        if fault.mode == "hang":
            await asyncio.sleep(3600)  # the engine's action timeout cuts this short
        raise InjectedFault(f"injected fault in blade table {self.name}")

    @property
    def index_fields(self) -> tuple[str, ...]:
        """Fields with a lookup index (their values must be hashable strings)."""
        return self._index_fields

    def tamper(self, key: str, row: Row | None) -> None:
        """Change a row behind the resync engine's back (fault injection)."""
        self._set(key, row)

    def _set(self, key: str, row: Row | None) -> None:
        old = self._rows.get(key)
        for field, index in self._indexes.items():
            if old is not None and field in old:
                bucket = index.get(old[field])
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del index[old[field]]
            if row is not None and field in row:
                index.setdefault(row[field], set()).add(key)
        if row is None:
            self._rows.pop(key, None)
        else:
            self._rows[key] = dict(row)
        if self.on_change is not None:
            self.on_change(self.name, key, row)


class _Context:
    """What a projection reads besides its row (``node.app.Context``): only the tables
    its blade table declares, so the engine's affected keys stay complete."""

    __slots__ = ("_parents", "_reader", "_table", "node")

    def __init__(self, table: ProjectedTable, reader: Reader) -> None:
        self._table = table
        self._reader = reader
        self.node = table.node_id
        #: Parent rows already read in this (consistent) read: a full resync of 100k
        #: volumes on a few aggregates reads each aggregate once.
        self._parents: dict[str, dict[str, Any] | None] = {}

    def parent(self, row: Mapping[str, Any], field: str) -> dict[str, Any] | None:
        parent = self._table._joins.get(field)
        if parent is None:
            raise UndeclaredRead(f"blade table {self._table.name} reads through undeclared join {field!r}")
        key = parent.prefix + str(row.get(field))
        try:
            return self._parents[key]
        except KeyError:
            pass
        kv = self._reader.get(key)
        value = kv.value if kv is not None and isinstance(kv.value, dict) else None
        self._parents[key] = value
        return value


def build_blades(app: App, registry: TableRegistry, node_id: str) -> dict[str, dict[str, ProjectedTable]]:
    """The blade tables of node ``node_id``, by blade then name, in the app's order."""
    blades: dict[str, dict[str, ProjectedTable]] = {b: {} for b in app.blade_names()}
    for spec in app.blades:
        blades[spec.blade][spec.name] = ProjectedTable(spec, registry, node_id)
    return blades
