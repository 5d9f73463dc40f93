"""Loading an app (``--app module:attribute``, ``RDBSYNC_APP``) and the fencing policy
it implies.

``load_app`` never lets an exception of the app's own code escape as a traceback: an
import error, a missing attribute, a value that is not an ``App`` or an inconsistent
app all become ``AppError`` with a message naming the problem. Start-up only.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import traceback
from typing import Any

from fencing import FencePolicy
from node._exceptions import AppError, UndeclaredRead
from node.app import App

DEFAULT_APP = "apps.ontap:app"


def load_app(spec: str) -> App:
    """Import ``module:attribute`` and return the ``App`` it names. Raises ``AppError``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise AppError(f"--app {spec!r} must look like module:attribute, e.g. {DEFAULT_APP}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn does: an app module next to where the node starts
    try:
        module = importlib.import_module(module_name)
    except AppError as exc:  # the App(...) at module level refused its declarations
        raise AppError(f"--app {spec}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the app's code is reported, not raised
        where = _where(exc)
        raise AppError(f"--app {spec}: cannot import {module_name!r}: {type(exc).__name__}: {exc}{where}") from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise AppError(f"--app {spec}: module {module_name!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not isinstance(value, App):
        raise AppError(f"--app {spec}: {attribute} is a {type(value).__name__}, not a node.app.App")
    problem = probe_projections(value)
    if problem is not None:
        raise AppError(f"--app {spec}: app {value.name!r}: {problem}")
    return value


class _ProbeValue:
    """Stands for any field value in a probe row: equal to nothing, empty, falsy."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return ""

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Any:
        return iter(())

    def __getitem__(self, key: Any) -> _ProbeValue:
        return self

    def get(self, key: Any, default: Any = None) -> _ProbeValue:
        return self


class _ProbeRow(dict[str, Any]):
    def __missing__(self, key: str) -> _ProbeValue:
        return _ProbeValue()

    def get(self, key: str, default: Any = None) -> Any:
        return self[key]


class _ProbeContext:
    def __init__(self, joins: tuple[str, ...], table: str) -> None:
        self.node = "probe"
        self._joins = joins
        self._table = table

    def parent(self, row: Any, field: str) -> dict[str, Any] | None:
        if field not in self._joins:
            raise UndeclaredRead(f"blade table {self._table!r}: its projection reads through undeclared join {field!r}")
        return _ProbeRow()


def probe_projections(app: App) -> str | None:
    """Run every projection once on a probe row, so that a read through a join the blade
    table does not declare is found at start-up, not when that row first arrives. Other
    errors are the probe's placeholders meeting real code, and say nothing. Start-up only."""
    for blade in app.blades:
        ctx = _ProbeContext(tuple(blade.joins), blade.name)
        for fn in (blade.where, blade.transform):
            if fn is None:
                continue
            try:
                fn(ctx, _ProbeRow())
            except UndeclaredRead as exc:
                return str(exc)
            except Exception:  # noqa: BLE001 - a placeholder the code could not use: no verdict
                continue
    return None


def _where(exc: BaseException) -> str:
    """' (file:line)' of the innermost frame of the app's code that raised, if any."""
    frames = traceback.extract_tb(exc.__traceback__)
    app_frames = [f for f in frames if "importlib" not in f.filename]
    if not app_frames:
        return ""
    last = app_frames[-1]
    return f" (at {last.filename}:{last.lineno})"


def policy_of(app: App, quorum_grace: float) -> FencePolicy:
    """The app's default fencing policy: its consumers and their tables; a consumer
    without its own grace gets ``quorum_grace`` (the node's ``--quorum-grace``)."""
    return FencePolicy(
        dependencies={c.name: frozenset(c.tables) for c in app.consumers},
        applications=frozenset(c.name for c in app.consumers if c.kind == "application"),
        quorum_grace={c.name: quorum_grace if c.quorum_grace is None else c.quorum_grace for c in app.consumers},
    )


def data_plane_reads(app: App) -> dict[str, frozenset[str]]:
    """Consumer -> every blade table its data-plane operations read."""
    reads: dict[str, frozenset[str]] = {}
    for d in app.data_plane:
        reads[d.consumer] = reads.get(d.consumer, frozenset()) | d.reads
    return reads


def app_identity(app: App) -> dict[str, str]:
    """Name, version and a digest of everything that decides what a node projects and
    accepts (tables, schemas, keys, references, blade tables and their inputs): two nodes
    with the same identity project the same tables from the same committed state, as far
    as declarations can tell."""
    shape = {
        "tables": [[t.name, t.model.model_json_schema(), t.key_doc, sorted(t.references.items())] for t in app.tables],
        "blades": [[b.name, b.blade, b.source, list(b.joins), list(b.index)] for b in app.blades],
        "consumers": [[c.name, sorted(c.tables), c.kind] for c in app.consumers],
    }
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"name": app.name, "version": app.version, "digest": digest}
