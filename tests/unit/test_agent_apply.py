"""The agent library's apply step (no node needed): callbacks in order, the first failure
or timeout stops the batch (nothing after it applied, the revision not moved), and a
timed-out callback that wakes up later changes nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rdbsync.agent import Agent, Change, _CallbackFailed


def changes(*keys: str) -> list[Change]:
    return [Change("t", k, None, {"name": k}) for k in keys]


def test_callbacks_run_in_order_and_stop_at_the_first_failure() -> None:
    seen: list[str] = []

    def add(table: str, key: str, row: dict[str, Any]) -> None:
        if key == "bad":
            raise ValueError("nope")
        seen.append(key)

    agent = Agent("http://127.0.0.1:1", "a", ["t"], on_add=add)
    agent._apply(3, changes("a", "b"))
    assert seen == ["a", "b"] and agent.applied_revision == 3
    with pytest.raises(_CallbackFailed) as err:
        agent._apply(4, changes("c", "bad", "d"))
    assert err.value.change.key == "bad" and "ValueError: nope" in err.value.error
    assert seen == ["a", "b", "c"]  # "d" is never applied out of order
    assert set(agent.rows("t")) == {"a", "b", "c"} and agent.applied_revision == 3  # never moved on


def test_a_callback_past_its_timeout_fails_and_its_late_return_changes_nothing() -> None:
    release = threading.Event()
    seen: list[str] = []

    def add(table: str, key: str, row: dict[str, Any]) -> None:
        if key == "slow":
            release.wait(5)
        seen.append(key)

    agent = Agent("http://127.0.0.1:1", "a", ["t"], on_add=add, callback_timeout=0.2)
    old_pool = agent._pool
    t0 = time.monotonic()
    with pytest.raises(_CallbackFailed, match="timed out"):
        agent._apply(2, changes("slow", "after"))
    assert time.monotonic() - t0 < 2
    assert agent._pool is not old_pool  # later callbacks get a fresh thread
    release.set()
    old_pool.shutdown(wait=True)  # the abandoned job runs to its end (it was released)
    assert "slow" in seen and "after" not in seen and agent.rows("t") == {} and agent.applied_revision == 0
    agent._apply(3, changes("next"))
    assert set(agent.rows("t")) == {"next"}


def test_a_batch_callback_gets_one_revision_at_a_time() -> None:
    batches: list[tuple[int, list[str]]] = []
    agent = Agent("http://127.0.0.1:1", "a", ["t"], on_batch=lambda rev, ch: batches.append((rev, [c.key for c in ch])))
    agent._apply(7, changes("x", "y"))
    assert batches == [(7, ["x", "y"])] and set(agent.rows("t")) == {"x", "y"}
