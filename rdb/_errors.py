"""The rdb exception tree.

    RdbError
    ├── InvalidCommand        a command failed validation before it was proposed
    │   ├── ValueTooLarge     a value (or a txn's values) over MAX_VALUE_BYTES stored
    │   └── InvalidMember     an address that cannot be a member (syntax, DNS, alias)
    ├── Compacted             watch history no longer reaches the asked revision
    ├── StorageCorrupt        a data file (journal, snapshot, meta) cannot be used
    │                         safely: the node refuses to start
    └── ProposalFailed        Raft did not give a definite "applied" answer
        ├── NotApplied        known not applied, and never will be (retry freely)
        │   └── MembershipChangePending  the leader refused: another change is pending
        ├── NoQuorum          no leader or no majority within the deadline; ``applied``
        │                     is False if nothing was in flight, else "unknown"
        └── OutcomeUnknown    may still be applied: retry with the same request id

Expected outcomes of an applied command (a CAS conflict, a missing key) are *values*
returned by the state machine, never exceptions.
"""

from __future__ import annotations


class RdbError(Exception):
    """Base of every error the rdb package raises on purpose."""


class InvalidCommand(RdbError):
    """A command is malformed or over a limit; it was not proposed."""


class ValueTooLarge(InvalidCommand):
    """A value's stored form (msgpack) is over ``MAX_VALUE_BYTES``; nothing was proposed."""


class InvalidMember(InvalidCommand):
    """An address that cannot be a member; ``details`` say which and why."""

    def __init__(self, message: str, **details: str) -> None:
        super().__init__(message)
        self.details = details


class Compacted(RdbError):
    """The asked revision is older than the retained change history."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} is compacted (history starts after {compacted})")
        self.requested = requested
        self.compacted = compacted


class StorageCorrupt(RdbError):
    """This node's data files are damaged or inconsistent; starting would lose or
    invent committed state. The message names the file and what to do; ``path`` is the
    file."""

    REMEDY = (
        "this node cannot start safely: remove it from the cluster through another member "
        "(rdbsync members rm ID), remove its data directory, start it with --join and add it back "
        "(rdbsync members add ID RAFT URL); it copies the data from the leader as a learner. "
        "Never restart it as a voter on wiped data: it would forget what it acknowledged"
    )

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class ProposalFailed(RdbError):
    """Raft gave no SUCCESS for a proposal. ``applied`` says what is known."""

    default_applied: bool | str = "unknown"

    def __init__(self, message: str, reason: str, applied: bool | str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.applied: bool | str = self.default_applied if applied is None else applied


class NotApplied(ProposalFailed):
    """The command was definitely not applied (rejected or discarded by Raft)."""

    default_applied: bool | str = False


class NoQuorum(ProposalFailed):
    """This node could not reach a leader with a majority before the deadline."""


class OutcomeUnknown(ProposalFailed):
    """The command may or may not be applied (timeout or leader change after proposal)."""


class MembershipChangePending(NotApplied):
    """Another membership change is not committed yet (or is being prepared): only one
    change at a time, cluster-wide. Nothing was applied; retry once it is done."""

    def __init__(self, message: str, reason: str = "membership_change_pending", **details: str) -> None:
        super().__init__(message, reason)
        self.details = details
