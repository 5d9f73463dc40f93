"""fencing: turn protocols off on a node while the config they depend on cannot be trusted.

Public surface: the pure policy (``FencePolicy``, ``default_policy``, ``decide``,
``guard``), its state and outcome values. Imports only ``resync`` and ``rdb`` (and today
needs neither).
"""

from fencing._policy import (
    PROTOCOLS,
    CaughtUp,
    Decision,
    Fence,
    FencePolicy,
    FenceState,
    LagObserved,
    Outcome,
    QuorumChanged,
    Reset,
    ResyncFailed,
    ResyncOk,
    Stalled,
    TableHealth,
    Tick,
    backing_off,
    decide,
    default_policy,
    due_for_retry,
    guard,
    initial_state,
)

__all__ = [
    "PROTOCOLS",
    "CaughtUp",
    "Decision",
    "Fence",
    "FencePolicy",
    "FenceState",
    "LagObserved",
    "Outcome",
    "QuorumChanged",
    "Reset",
    "ResyncFailed",
    "ResyncOk",
    "Stalled",
    "TableHealth",
    "Tick",
    "backing_off",
    "decide",
    "default_policy",
    "due_for_retry",
    "guard",
    "initial_state",
]
