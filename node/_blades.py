"""The N-blade and D-blade in-memory tables, each declared as a projection of committed
state for this node, and registered with the generic resync engine.

    N-blade: vservers, lifs (homed here), export_rules, cifs_shares,
             vldb (volume -> aggregate -> node, for all volumes)
    D-blade: aggregates (homed here), volumes (on aggregates homed here)

Threading: rows are read and changed on the node's asyncio loop only; projections are
pure functions of a ``resync.Reader`` and run under the store's read lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from node._exceptions import InjectedFault
from node._tables import TABLES, TableDef
from rdb import Event
from resync import Action, Reader, Row

Keep = Callable[[Reader, dict[str, Any]], bool]
Transform = Callable[[Reader, dict[str, Any]], dict[str, Any]]


@dataclass
class Fault:
    mode: str  # "error" | "hang"
    remaining: int | None  # actions left to fail; None: until cleared


class BladeTable:
    """One blade table: rows in memory, a projection, secondary indexes, fault hooks."""

    def __init__(
        self,
        name: str,
        blade: str,
        source: TableDef,
        *,
        keep: Keep | None = None,
        transform: Transform | None = None,
        parents: Sequence[str] = (),
        index_fields: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.blade = blade
        self.source = source
        self._keep = keep
        self._transform = transform
        self._parent_prefixes = tuple(TABLES[p].prefix for p in parents)
        self._rows: dict[str, Row] = {}
        self._index_fields = tuple(index_fields)
        self._indexes: dict[str, dict[Any, set[str]]] = {f: {} for f in index_fields}
        self.fault: Fault | None = None
        self.apply_delay = 0.0

    # ----------------------------------------------------------- projection

    def _project(self, reader: Reader, row: Any) -> Row | None:
        if not isinstance(row, dict):
            return None
        if self._keep is not None and not self._keep(reader, row):
            return None
        return self._transform(reader, row) if self._transform is not None else row

    def desired_all(self, reader: Reader) -> dict[str, Row]:
        kvs, _ = reader.range(self.source.prefix)
        start = len(self.source.prefix)
        out: dict[str, Row] = {}
        for kv in kvs:
            row = self._project(reader, kv.value)
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
        return None if kv is None else self._project(reader, kv.value)

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


def _home_of_aggregate(reader: Reader, aggregate: str) -> str | None:
    kv = reader.get(TABLES["aggregates"].storage_key(aggregate))
    if kv is None or not isinstance(kv.value, dict):
        return None
    home = kv.value.get("home_node")
    return home if isinstance(home, str) else None


def _vldb_row(reader: Reader, volume: dict[str, Any]) -> dict[str, Any]:
    return {
        "volume": volume["name"],
        "vserver": volume["vserver"],
        "aggregate": volume["aggregate"],
        "node": _home_of_aggregate(reader, volume["aggregate"]),
        "junction_path": volume["junction_path"],
        "state": volume["state"],
        "export_policy": volume["export_policy"],
    }


def build_blades(node_id: str) -> dict[str, dict[str, BladeTable]]:
    """The N-blade and D-blade tables of node ``node_id``."""

    def homed_here(_: Reader, row: dict[str, Any]) -> bool:
        return row.get("home_node") == node_id

    def on_local_aggregate(reader: Reader, row: dict[str, Any]) -> bool:
        return _home_of_aggregate(reader, str(row.get("aggregate"))) == node_id

    nblade = {
        "vservers": BladeTable("vservers", "nblade", TABLES["vservers"]),
        "lifs": BladeTable("lifs", "nblade", TABLES["lifs"], keep=homed_here, index_fields=("vserver",)),
        "export_rules": BladeTable("export_rules", "nblade", TABLES["export_rules"], index_fields=("vserver",)),
        "cifs_shares": BladeTable("cifs_shares", "nblade", TABLES["cifs_shares"]),
        "vldb": BladeTable(
            "vldb",
            "nblade",
            TABLES["volumes"],
            transform=_vldb_row,
            parents=("aggregates",),
            index_fields=("vserver",),
        ),
    }
    dblade = {
        "aggregates": BladeTable("aggregates", "dblade", TABLES["aggregates"], keep=homed_here),
        "volumes": BladeTable("volumes", "dblade", TABLES["volumes"], keep=on_local_aggregate, parents=("aggregates",)),
    }
    return {"nblade": nblade, "dblade": dblade}
