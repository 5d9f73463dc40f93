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


class Daemon:
    """What a daemon holds, changed only by the agent's per-row callbacks."""

    def __init__(self, slow_key: str | None = None) -> None:
        self.memory: dict[str, dict[str, Any]] = {}
        self.removed_missing: list[str] = []
        self.slow_key = slow_key
        self.release = threading.Event()

    def add(self, table: str, key: str, row: dict[str, Any]) -> None:
        if key == self.slow_key:
            self.release.wait(5)
        self.memory[key] = row

    def modify(self, table: str, key: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.add(table, key, new)

    def remove(self, table: str, key: str, old: dict[str, Any]) -> None:
        if self.memory.pop(key, None) is None:
            self.removed_missing.append(key)

    def agent(self, **kw: Any) -> Agent:
        return Agent(
            "http://127.0.0.1:1", "a", ["t"], on_add=self.add, on_modify=self.modify, on_remove=self.remove, **kw
        )


def stream_of(*frames: dict[str, Any]) -> Any:
    return lambda path: iter([("changes", f) for f in frames])


def frame(revision: int, *changes: tuple[str, dict[str, Any] | None]) -> dict[str, Any]:
    return {
        "revision": revision,
        "cursor": revision,
        "changes": [{"table": "t", "key": k, "row": r} for k, r in changes],
    }


def test_a_stream_batch_that_adds_then_removes_a_row_leaves_the_daemon_without_it() -> None:
    """A batch spans every revision since the last: a row added and removed again within
    it (its parent moved here, then away) must not stay in the daemon. Comparing each
    change with what was held before the batch dropped the remove as a no-op (a chaos run
    saw an agent serve three routes its node no longer had)."""
    daemon = Daemon()
    agent = daemon.agent()
    agent._apply(1, [Change("t", "kept", None, {"v": 1})])
    agent._sse = stream_of(  # type: ignore[method-assign]
        frame(
            5,
            ("gone", {"v": 1}),
            ("kept", None),
            ("gone", None),
            ("kept", {"v": 1}),
            ("new", {"v": 1}),
            ("new", {"v": 2}),
        )
    )
    agent._follow(cursor=0, epoch=1)
    assert daemon.memory == {"kept": {"v": 1}, "new": {"v": 2}}
    assert agent.rows("t") == daemon.memory and agent.applied_revision == 5


def serve_load(agent: Agent, revision: int, rows: dict[str, dict[str, Any]]) -> None:
    body = {"revision": revision, "cursor": 0, "epoch": 1, "tables": {"t": rows}, "fenced": []}

    def request(*args: Any, **kwargs: Any) -> tuple[int, Any]:
        agent._contact()  # a node that answers: only the callback keeps the agent from serving
        return 200, body

    agent._request = request  # type: ignore[method-assign]


def test_a_timed_out_add_that_returns_later_is_undone_by_the_next_load() -> None:
    """The timed-out callback finishes after the agent gave up on it: the daemon holds the
    row, the agent does not know it. The node no longer has the row by the next load, so
    a plain diff would change nothing and the daemon would serve it for ever."""
    daemon = Daemon(slow_key="slow")
    agent = daemon.agent(callback_timeout=0.2)
    with pytest.raises(_CallbackFailed, match="timed out"):
        agent._apply(2, changes("slow"))
    agent.failure = "t/slow: callback timed out"
    # A load while the callback is still out re-applies, but serves nothing yet.
    serve_load(agent, 3, {})
    agent._load()
    assert not agent.serving() and agent.why_not_serving() == "a callback failed: t/slow: callback timed out"
    daemon.release.set()  # the callback returns: the row lands in the daemon
    deadline = time.monotonic() + 5
    while agent._stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert daemon.memory == {"slow": {"name": "slow"}} and agent.rows("t") == {}
    assert agent._recheck.is_set()  # the stream asks for a load now
    agent._load()
    assert daemon.memory == {} and agent.failure is None and agent._unsure == {}


def test_a_timed_out_change_is_re_applied_even_where_the_node_agrees_with_the_agent() -> None:
    """The agent held v1, the node sent v2 and the callback timed out, then the node went
    back to v1: the diff sees nothing to do, but the daemon may hold v2."""
    daemon = Daemon(slow_key="k")
    daemon.release.set()
    agent = daemon.agent(callback_timeout=0.2)
    agent._apply(1, [Change("t", "k", None, {"v": 1})])
    daemon.release.clear()
    with pytest.raises(_CallbackFailed):
        agent._apply(2, [Change("t", "k", {"v": 1}, {"v": 2})])
    daemon.release.set()
    deadline = time.monotonic() + 5
    while agent._stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert daemon.memory == {"k": {"v": 2}}
    serve_load(agent, 3, {"k": {"v": 1}})
    agent._load()
    assert daemon.memory == {"k": {"v": 1}} == dict(agent.rows("t"))
