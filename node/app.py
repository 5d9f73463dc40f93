"""The public app API: what an appliance built on rdbsync declares (import this module only).

An **app** is one ``App`` value naming

- its management tables (``Table``): a pydantic model per table, how the URL key is
  formed from a row, and references to other tables (a missing parent is refused with
  422 ``missing_reference``, a referenced parent with 409 ``still_referenced``, both
  checked inside the replicated state machine);
- its blade tables (``BladeTable``): the per-node tables, each a pure projection of one
  management table for one node: a filter (``where``), a transform, and joins through
  the source's references (``joins``). The engine derives the incremental "affected
  keys" from these declarations: a change to a source row re-projects that row, a change
  to a joined parent re-projects the rows that reference it;
- its consumers (``Consumer``): protocols and client applications, the blade tables each
  depends on and its quorum grace. This is the app's default fencing policy;
  ``--fence-policy`` can still override it;
- optionally data-plane handlers (``DataPlane``), answered from blade tables only, behind
  the node's one fencing guard, and stamped with the revision of the tables they read.

A node loads an app with ``--app module:attribute`` (or ``RDBSYNC_APP``); the default is
``apps.ontap:app``. ``App(...)`` checks its declarations and raises ``AppError`` naming
the first problem; the node reports it and does not start.

Projections run on the node's event loop under the store's read lock: they must be pure
and fast, and read other tables only through their declared joins (``ctx.parent``).
Data-plane handlers run on the loop too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from node._exceptions import AppError, BadRequest, UndeclaredRead

__all__ = [
    "App",
    "AppError",
    "BadRequest",
    "BladeTable",
    "BladeView",
    "Consumer",
    "Context",
    "DataPlane",
    "QueryParam",
    "Table",
    "UndeclaredRead",
    "homed_on_node",
    "parent_homed_on_node",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

Row = dict[str, Any]


class Context(Protocol):
    """What a projection may read besides its own row. Loop thread, under the read lock."""

    @property
    def node(self) -> str:
        """The id of the node the projection is for."""
        ...

    def parent(self, row: Mapping[str, Any], field: str) -> Row | None:
        """The row ``row[field]`` references (``field`` must be one of the blade's
        ``joins``: reading through any other field raises ``UndeclaredRead``). This is
        the only way a projection reads another table, so the declarations are all the
        engine needs to know which rows a change affects."""
        ...


class BladeView(Protocol):
    """A blade table as a data-plane handler sees it (read only)."""

    def rows(self) -> Mapping[str, Mapping[str, Any]]: ...

    def lookup(self, field: str, value: Any) -> list[Mapping[str, Any]]:
        """Rows whose ``field`` (one of the blade table's ``index`` fields) equals ``value``."""
        ...


KeyOf = Callable[[Mapping[str, Any]], str]
Where = Callable[[Context, Row], bool]
Transform = Callable[[Context, Row], Row]
Handler = Callable[[Mapping[str, BladeView], Mapping[str, str]], dict[str, Any]]


@dataclass(frozen=True)
class Table:
    """A management table at ``/v1/tables/<name>/<key>``.

    ``key`` is the row field (or the fields, joined with ':') that form the URL key.
    ``references`` maps a field to the table whose row key it holds."""

    name: str
    model: type[BaseModel]
    key: str | tuple[str, ...] = "name"
    references: Mapping[str, str] = field(default_factory=dict)

    def key_of(self, row: Mapping[str, Any]) -> str:
        if isinstance(self.key, str):
            return str(row[self.key])
        return ":".join(str(row[f]) for f in self.key)

    @property
    def key_doc(self) -> str:
        """How the key is formed, e.g. ``name`` or ``<vserver>:<share>``."""
        return self.key if isinstance(self.key, str) else ":".join(f"<{f}>" for f in self.key)


@dataclass(frozen=True)
class BladeTable:
    """A per-node table of ``blade``: the rows of management table ``source`` that ``where``
    keeps for this node, each passed through ``transform`` (both optional).

    ``joins`` are reference fields of ``source`` the projection reads through
    (``ctx.parent(row, field)``): a change to such a parent re-projects its children.
    ``index`` fields get a lookup index for data-plane handlers."""

    name: str
    blade: str
    source: str
    where: Where | None = None
    transform: Transform | None = None
    joins: tuple[str, ...] = ()
    index: tuple[str, ...] = ()


@dataclass(frozen=True)
class Consumer:
    """A protocol or a client application on every node, fenced while any blade table in
    ``tables`` cannot be trusted. ``quorum_grace`` (seconds, None: the node's
    ``--quorum-grace``) is how long it keeps serving last-known config without quorum."""

    name: str
    tables: frozenset[str]
    kind: Literal["protocol", "application"] = "protocol"
    quorum_grace: float | None = None


@dataclass(frozen=True)
class QueryParam:
    """How the API document describes one query parameter of a data-plane operation:
    ``schema`` (JSON Schema; None: a non-empty string), an ``example``, a
    ``description``. Documentation only: the handler still checks its input."""

    name: str
    schema: Mapping[str, Any] | None = None
    example: str | None = None
    description: str = ""


@dataclass(frozen=True)
class DataPlane:
    """``GET /v1/data/<consumer>/<operation>``: ``handler(blade_tables, query)`` answers
    from the blade tables in ``reads`` (all of them must be among the consumer's tables).

    ``params`` are required query parameters; ``scope`` is the one naming the scope a
    vserver-scoped fence applies to (None: node-wide only). The node runs the guard
    first, then the handler, and adds ``revision``. A handler raises ``BadRequest`` for
    bad input; any other KeyError/TypeError/ValueError means a blade row it cannot read:
    the node fences the request (``corrupt_table``) and resyncs in full.

    For the API document (``/v1/openapi.json``): ``summary``, and ``docs``: a
    ``QueryParam`` for any required parameter worth more than "a non-empty string",
    and one for each optional parameter the handler reads."""

    consumer: str
    operation: str
    handler: Handler
    reads: frozenset[str]
    params: tuple[str, ...] = ()
    scope: str | None = None
    summary: str = ""
    docs: tuple[QueryParam, ...] = ()


@dataclass(frozen=True)
class App:
    """An appliance's tables, projections, consumers and data plane. Raises ``AppError``."""

    name: str
    version: str
    tables: Sequence[Table]
    blades: Sequence[BladeTable]
    consumers: Sequence[Consumer]
    data_plane: Sequence[DataPlane] = ()

    def __post_init__(self) -> None:
        problem = _first_problem(self)
        if problem is not None:
            raise AppError(f"app {self.name!r}: {problem}")

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    def blade_names(self) -> list[str]:
        """The blades, in declaration order."""
        return list(dict.fromkeys(b.blade for b in self.blades))


def _duplicate(names: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _first_problem(app: App) -> str | None:
    if not _NAME.match(app.name) or not app.version:
        return "an app needs a lowercase name and a version"
    for what, names in (
        ("management table", [t.name for t in app.tables]),
        ("blade table", [b.name for b in app.blades]),
        ("consumer", [c.name for c in app.consumers]),
        ("data-plane operation", [f"{d.consumer}/{d.operation}" for d in app.data_plane]),
    ):
        bad = next((n for n in names if not _NAME.match(n.replace("/", "_"))), None)
        if bad is not None:
            return f"{what} name {bad!r} must be lowercase letters, digits and '_'"
        dup = _duplicate(names)
        if dup is not None:
            return f"two {what}s are named {dup!r}"
    tables = {t.name: t for t in app.tables}
    for t in app.tables:
        if not (isinstance(t.model, type) and issubclass(t.model, BaseModel)):
            return f"table {t.name!r}: model must be a pydantic BaseModel subclass"
        fields = set(t.model.model_fields)
        for key_field in (t.key,) if isinstance(t.key, str) else t.key:
            if key_field not in fields:
                return f"table {t.name!r}: key field {key_field!r} is not a field of {t.model.__name__}"
        for ref_field, parent in t.references.items():
            if parent not in tables:
                return f"table {t.name!r}: field {ref_field!r} references unknown table {parent!r}"
            if ref_field not in fields:
                return f"table {t.name!r}: reference field {ref_field!r} is not a field of {t.model.__name__}"
    blades = {b.name for b in app.blades}
    for b in app.blades:
        if not _NAME.match(b.blade):
            return f"blade table {b.name!r}: blade name {b.blade!r} must be lowercase letters, digits and '_'"
        source = tables.get(b.source)
        if source is None:
            return f"blade table {b.name!r}: its projection reads undeclared table {b.source!r}"
        for join in b.joins:
            if join not in source.references:
                return (
                    f"blade table {b.name!r}: its projection reads through {b.source}.{join}, "
                    f"which is not a declared reference of {b.source!r}"
                )
    for c in app.consumers:
        unknown = sorted(set(c.tables) - blades)
        if unknown:
            return f"consumer {c.name!r} depends on unknown blade table(s) {unknown}"
        if not c.tables:
            return f"consumer {c.name!r} depends on no blade table"
        if c.quorum_grace is not None and not 0.5 <= c.quorum_grace <= 3600:
            return f"consumer {c.name!r}: quorum_grace must be between 0.5 and 3600 seconds"
    consumers = {c.name: c for c in app.consumers}
    for d in app.data_plane:
        consumer = consumers.get(d.consumer)
        if consumer is None:
            return f"data-plane operation {d.consumer}/{d.operation} belongs to unknown consumer {d.consumer!r}"
        unread = sorted(set(d.reads) - set(consumer.tables))
        if unread:
            return (
                f"data-plane operation {d.consumer}/{d.operation} reads {unread}, which consumer "
                f"{d.consumer!r} does not depend on (it would serve from tables that may have failed)"
            )
        if not d.reads:
            return f"data-plane operation {d.consumer}/{d.operation} reads no blade table"
        documented = [q.name for q in d.docs]
        if len(set(documented)) != len(documented):
            return f"data-plane operation {d.consumer}/{d.operation} documents a query parameter twice"
    return None


# ---------------------------------------------------------------- common projections


def homed_on_node(field: str = "home_node") -> Where:
    """A filter: rows whose ``field`` names this node."""

    def where(ctx: Context, row: Row) -> bool:
        return row.get(field) == ctx.node

    return where


def parent_homed_on_node(join: str, field: str = "home_node") -> Where:
    """A filter through a join: rows whose parent (via reference field ``join``) has
    ``field`` naming this node, e.g. volumes on aggregates homed here."""

    def where(ctx: Context, row: Row) -> bool:
        parent = ctx.parent(row, join)
        return parent is not None and parent.get(field) == ctx.node

    return where
