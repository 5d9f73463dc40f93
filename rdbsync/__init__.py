"""rdbsync for its users: ``Client`` / ``AsyncClient`` (HTTP, with failover and
exactly-once retries) and their exceptions; ``Agent``, the library a data-plane daemon
embeds to hold blade tables of its node (``rdbsync.agent``). The ``rdbsync`` command is ``rdbsync.cli``.

    from rdbsync import Client
    with Client(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as c:
        rev = c.put("vol1", {"size": 10})
        for event in c.watch("vol", from_revision=rev):
            ...

This package imports neither the node nor aiohttp (``scripts/check_imports.py``).
"""

from rdbsync._aio import AsyncClient
from rdbsync._api import Page
from rdbsync._client import Client
from rdbsync._core import KeyValue, Req, WatchEvent
from rdbsync._errors import (
    Compacted,
    Conflict,
    Fenced,
    InvalidRequest,
    NotFound,
    OutcomeUnknown,
    RdbsyncError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from rdbsync.agent import Agent, AgentError, Change

__all__ = [
    "Agent",
    "AgentError",
    "AsyncClient",
    "Change",
    "Client",
    "Compacted",
    "Conflict",
    "Fenced",
    "InvalidRequest",
    "KeyValue",
    "NotFound",
    "OutcomeUnknown",
    "Page",
    "RdbsyncError",
    "Req",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WatchEvent",
]
