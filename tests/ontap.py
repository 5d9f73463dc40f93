"""The ONTAP app as the runtime sees it, for tests that drive the runtime's pieces
directly (blade tables, the table registry) rather than through a node."""

from __future__ import annotations

from apps.ontap import app as ontap_app
from node._blades import ProjectedTable
from node._blades import build_blades as _build_blades
from node._tables import TableRegistry
from rdb import KeyValue

ONTAP = ontap_app
REGISTRY = TableRegistry(ONTAP)
TABLES = REGISTRY.tables
REFERENCES = REGISTRY.references
BladeTable = ProjectedTable


def build_blades(node_id: str) -> dict[str, dict[str, ProjectedTable]]:
    return _build_blades(ONTAP, REGISTRY, node_id)


def restore_problem(entries: list[KeyValue]) -> str | None:
    return REGISTRY.restore_problem(entries)
