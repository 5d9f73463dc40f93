"""rdb: a durable, linearizable replicated key space on PySyncObj.

Public surface: ``StateMachine`` (pure core), ``ReplicatedStore`` (the asyncio shell),
the value types and the exception tree.
This package imports nothing else of rdbsync's.
"""

from rdb._commands import MAX_KEY_BYTES, MAX_TXN_OPS, check_key, check_value, new_request_id
from rdb._errors import (
    Compacted,
    InvalidCommand,
    InvalidMember,
    MembershipChangePending,
    NoQuorum,
    NotApplied,
    OutcomeUnknown,
    ProposalFailed,
    RdbError,
    StorageCorrupt,
    ValueTooLarge,
)
from rdb._membership import CATCH_UP_MAX_LAG, caught_up, check_new_member, normalize_address, resolve
from rdb._raft import Leadership, RaftStatus, ReadPosition
from rdb._state import MAX_VALUE_BYTES, MAX_VALUE_DEPTH, Event, KeyValue, Reference, StateMachine
from rdb._store import ReplicatedStore, snapshot_entries

__all__ = [
    "CATCH_UP_MAX_LAG",
    "MAX_KEY_BYTES",
    "MAX_TXN_OPS",
    "MAX_VALUE_BYTES",
    "MAX_VALUE_DEPTH",
    "Compacted",
    "Event",
    "InvalidCommand",
    "InvalidMember",
    "KeyValue",
    "Leadership",
    "MembershipChangePending",
    "NoQuorum",
    "NotApplied",
    "OutcomeUnknown",
    "ProposalFailed",
    "RaftStatus",
    "RdbError",
    "ReadPosition",
    "Reference",
    "ReplicatedStore",
    "StateMachine",
    "StorageCorrupt",
    "ValueTooLarge",
    "caught_up",
    "check_key",
    "check_new_member",
    "check_value",
    "new_request_id",
    "normalize_address",
    "resolve",
    "snapshot_entries",
]
