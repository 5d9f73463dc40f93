"""The pure resync planner: desired rows and actual rows in, actions out.

``plan`` is deterministic (actions sorted by kind, then key) and does no I/O. Rows are
compared by value equality, so any JSON-like mapping works for any table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Row = Mapping[str, Any]
ActionKind = Literal["remove", "modify", "add"]
_ORDER = {"remove": 0, "modify": 1, "add": 2}


@dataclass(frozen=True, slots=True)
class Action:
    """One change to a blade table: ``row`` is the new row (None for a remove)."""

    kind: ActionKind
    key: str
    row: Row | None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.kind, "key": self.key, "row": None if self.row is None else dict(self.row)}


def plan(desired: Mapping[str, Row], actual: Mapping[str, Row], keys: Iterable[str] | None = None) -> list[Action]:
    """Actions that turn ``actual`` into ``desired``.

    With ``keys``, only those keys are compared (an incremental resync: the cost is
    proportional to the change, not to the table); without, every key of either side.
    """
    candidates = set(desired) | set(actual) if keys is None else set(keys)
    actions: list[Action] = []
    for key in candidates:
        want = desired.get(key)
        have = actual.get(key)
        if want is None and have is not None:
            actions.append(Action("remove", key, None))
        elif want is not None and have is None:
            actions.append(Action("add", key, want))
        elif want is not None and have is not None and dict(want) != dict(have):
            actions.append(Action("modify", key, want))
    actions.sort(key=lambda a: (_ORDER[a.kind], a.key))
    return actions


def apply_plan(actual: dict[str, Row], actions: Iterable[Action]) -> dict[str, Row]:
    """Reference semantics of a plan on a plain dict (what tests hold the planner to)."""
    out = dict(actual)
    for action in actions:
        if action.kind == "remove":
            out.pop(action.key, None)
        else:
            assert action.row is not None
            out[action.key] = action.row
    return out
