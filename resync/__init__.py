"""resync: the generic engine that keeps blade tables equal to committed state.

Public surface: the pure planner (``plan``, ``Action``), the adapter protocol
(``TableAdapter``), the read seam (``Reader``, ``ConsistentReader``), and
``ResyncEngine`` with its outcome and status values. Imports only ``rdb``.
"""

from resync._engine import (
    ConsistentReader,
    Reader,
    ResyncEngine,
    RunKind,
    TableAdapter,
    TableOutcome,
    TableStatus,
    UnknownTable,
)
from resync._planner import Action, Row, apply_plan, plan

__all__ = [
    "Action",
    "ConsistentReader",
    "Reader",
    "ResyncEngine",
    "Row",
    "RunKind",
    "TableAdapter",
    "TableOutcome",
    "TableStatus",
    "UnknownTable",
    "apply_plan",
    "plan",
]
