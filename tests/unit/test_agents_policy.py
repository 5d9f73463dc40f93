"""An agent is one more table to the pure fencing policy (node/_agents.py): the consumers
that depend on a table it holds depend on it, and its failures, lag and recovery fence
and unfence exactly those."""

from __future__ import annotations

import pytest

from apps.proxy import app as proxy_app
from fencing import CaughtUp, LagObserved, ResyncFailed, ResyncOk, ScopedDependency, decide, initial_state
from node._agents import parse_agents, with_agents
from node._loading import policy_of


def test_consumers_depending_on_a_held_table_depend_on_the_agent() -> None:
    base = policy_of(proxy_app, 5.0)
    policy = with_agents(base, {"edge": frozenset({"routes"}), "hc": frozenset({"members"})})
    assert policy.dependencies["proxy"] == base.dependencies["proxy"] | {"agent:edge", "agent:hc"}
    assert policy.dependencies["healthcheck"] == base.dependencies["healthcheck"] | {"agent:hc"}
    scoped = with_agents(
        base.__class__(dependencies={}, scoped={"nfs": (ScopedDependency(frozenset({"vs1"}), frozenset({"routes"})),)}),
        {"edge": frozenset({"routes"})},
    )
    assert scoped.scoped["nfs"][0].tables == frozenset({"routes", "agent:edge"})
    assert with_agents(base, {}) is base


def test_agent_failure_lag_and_recovery_fence_only_its_dependents() -> None:
    policy = with_agents(policy_of(proxy_app, 5.0), {"edge": frozenset({"routes"})})
    state = initial_state(policy, 0.0)
    assert set(state.fences) == {"proxy", "healthcheck"}  # nothing synced yet, the agent included
    for table in sorted(policy.tables()):
        state = decide(policy, state, ResyncOk(table, 5), 1.0).state
    state = decide(policy, state, CaughtUp(5), 1.0).state
    assert state.fences == {}
    failed = decide(policy, state, ResyncFailed("agent:edge", "agent_failed", "agent edge: boom", 6), 2.0)
    assert set(failed.state.fences) == {"proxy"} and failed.state.fences["proxy"].table == "agent:edge"
    assert failed.summary == "resync_failed:agent:edge,fenced:proxy"
    lifted = decide(policy, failed.state, ResyncOk("agent:edge", 6), 3.0)
    assert lifted.state.fences == {} and lifted.summary == "unfenced:proxy"
    lagging = decide(policy, lifted.state, LagObserved("agent:edge", 3, policy.max_lag_seconds + 1, 9), 4.0)
    assert lagging.state.fences["proxy"].cause == "lag"


@pytest.mark.parametrize(
    ("specs", "problem"), [(["edge"], "must look like"), (["edge="], "must look like"), (["a=t", "a=u"], "twice")]
)
def test_bad_agent_declarations_name_the_problem(specs: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_agents(specs)
    assert parse_agents(["edge=routes, listeners"]) == {"edge": frozenset({"routes", "listeners"})}


async def test_a_stream_behind_the_compacted_change_log_is_told_to_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node keeps a bounded change log for its agents; a stream whose cursor fell
    below it gets ``reload`` (reason ``cursor_compacted``), never an error or a gap, and
    the agent then loads afresh (the same path as a snapshot install)."""
    from types import SimpleNamespace
    from typing import Any

    import node._agents as agents_module
    from node._agents import AgentHub

    monkeypatch.setattr(agents_module, "LOG_LIMIT", 5)
    routes = SimpleNamespace(on_change=None)
    engine = SimpleNamespace()

    async def wait_idle(timeout: float) -> bool:
        return True

    engine.wait_idle = wait_idle
    runtime: Any = SimpleNamespace(
        tables={"routes": routes},
        store=SimpleNamespace(add_load_listener=lambda listener: None),
        engine=engine,
        settle_timeout=1.0,
        fence_state=SimpleNamespace(tables={}),
        applied_revision=lambda tables: 7,
        policy=SimpleNamespace(dependencies={}, scoped={}),
        fences=lambda: [],
    )
    hub = AgentHub(runtime, {"edge": frozenset({"routes"})})
    for i in range(11):  # past twice the limit: the oldest entries are dropped
        routes.on_change("routes", f"k{i}", {"i": i})
    assert hub.since(0, frozenset({"routes"})) is None
    assert [key for _, _, key, _ in hub.since(hub.seq - 2, frozenset({"routes"})) or []] == ["k9", "k10"]
    frames = [frame async for frame in hub.stream("edge", cursor=0, epoch=hub.epoch)]
    assert len(frames) == 1 and frames[0].startswith(b"event: reload\n")
    assert b'"reason":"cursor_compacted"' in frames[0]


def test_an_agents_fence_list_is_decided_now_as_the_data_plane_guard_decides() -> None:
    """The fences the node has raised can lag the facts: a leader not heard from for
    longer than the consumer's grace fences a data-plane request at once (``admit``),
    before the worker's next tick raises it. An agent's fence list is decided the same
    way, so its daemon stops serving in step with the node's own data plane."""
    from types import SimpleNamespace
    from typing import Any

    from fencing import CaughtUp
    from node._agents import AgentHub
    from node._runtime import BladeRuntime

    policy = with_agents(policy_of(proxy_app, 5.0), {"edge": frozenset({"routes"})})
    state = initial_state(policy, 0.0)
    for table in sorted(policy.tables()):
        state = decide(policy, state, ResyncOk(table, 5), 1.0).state
    state = decide(policy, state, CaughtUp(5), 1.0).state
    assert state.fences == {}
    contact_age = [0.5]
    runtime: Any = SimpleNamespace(
        tables={"routes": SimpleNamespace(on_change=None)},
        store=SimpleNamespace(add_load_listener=lambda listener: None, last_leader_contact_age=lambda: contact_age[0]),
        policy=policy,
        fence_state=state,
        clock=lambda: 10.0,
        clock_offset=0.0,
        last_iteration=9.9,
        last_heartbeat=9.9,
        fences=lambda: [],  # what the node has raised: nothing yet
    )
    runtime.verdict = BladeRuntime.verdict.__get__(runtime)
    hub = AgentHub(runtime, {"edge": frozenset({"routes"})})
    record = hub.record_of("edge")
    assert hub.fenced_for(record) == []
    contact_age[0] = policy.grace("proxy") + 1.0
    fenced = hub.fenced_for(record)
    assert [(f["protocol"], f["cause"]) for f in fenced] == [("proxy", "no_quorum")]
