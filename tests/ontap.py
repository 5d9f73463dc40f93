"""The ONTAP app as the runtime sees it, for tests that drive the runtime's pieces
directly (blade tables, the table registry) rather than through a node."""

from __future__ import annotations

import dataclasses
from typing import Any

from apps.ontap import app as ontap_app
from fencing import FencePolicy, policy_from_document
from node._blades import ProjectedTable
from node._blades import build_blades as _build_blades
from node._loading import policy_of
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


#: The ONTAP app's protocols, and its default fencing policy (what the pure-policy tests use).
PROTOCOLS = tuple(c.name for c in ONTAP.consumers if c.kind == "protocol")


def default_policy(**overrides: Any) -> FencePolicy:
    return dataclasses.replace(policy_of(ONTAP, 5.0), **overrides)


def from_document(doc: Any, *, known_tables: Any, quorum_grace: float = 5.0) -> FencePolicy:
    """A policy document over the ONTAP app's policy, as the node builds it."""
    base = dataclasses.replace(policy_of(ONTAP, quorum_grace))
    return policy_from_document(doc, known_tables=known_tables, quorum_grace=quorum_grace, base=base)
