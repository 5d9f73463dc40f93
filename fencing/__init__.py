"""fencing: turn protocols off on a node while the config they depend on cannot be trusted.

Public surface: the pure policy (``FencePolicy``, ``default_policy``, ``decide``,
``guard``), its state and outcome values, ``policy_from_document`` and the
``FencingError`` tree. Imports only ``resync`` and ``rdb`` (and today
needs neither).
"""

from fencing._document import policy_from_document, policy_to_document
from fencing._errors import FencingError, PolicyError
from fencing._policy import (
    DEFAULT_QUORUM_GRACE,
    MIN_QUORUM_GRACE,
    PROTOCOLS,
    AppChecked,
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
    ScopedDependency,
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
    "DEFAULT_QUORUM_GRACE",
    "MIN_QUORUM_GRACE",
    "PROTOCOLS",
    "AppChecked",
    "CaughtUp",
    "Decision",
    "Fence",
    "FencePolicy",
    "FenceState",
    "FencingError",
    "LagObserved",
    "Outcome",
    "PolicyError",
    "QuorumChanged",
    "Reset",
    "ResyncFailed",
    "ResyncOk",
    "ScopedDependency",
    "Stalled",
    "TableHealth",
    "Tick",
    "backing_off",
    "decide",
    "default_policy",
    "due_for_retry",
    "guard",
    "initial_state",
    "policy_from_document",
    "policy_to_document",
]
