"""The request-time guard is the pure policy's (``fencing.admit``): a resync half-way, a
node that has not run, a leader not heard from and a corrupt blade row are fences the
policy decides on one injected clock; fences and events are typed values; a node whose
app is not the cluster's is fenced by the policy (``AppChecked``)."""

from __future__ import annotations

from typing import Any

import pytest

from fencing import (
    AppChecked,
    AppMatched,
    AppMismatched,
    CaughtUp,
    FenceLifted,
    FencePolicy,
    FenceRaised,
    FenceState,
    GuardFacts,
    ResyncOk,
    admit,
    corrupt_table,
    decide,
    initial_state,
)
from node._exceptions import Fenced
from node._runtime import BladeRuntime

POLICY = FencePolicy(
    dependencies={"web": frozenset({"t"}), "batch": frozenset({"t"})},
    applications=frozenset({"batch"}),
    quorum_grace={"web": 2.0, "batch": 10.0},
)
T0 = 1000.0


def serving_state() -> FenceState:
    state = initial_state(POLICY, T0)
    for outcome in (CaughtUp(1), ResyncOk("t", 1)):
        state = decide(POLICY, state, outcome, T0).state
    assert state.fences == {}
    return state


def facts(**overrides: Any) -> GuardFacts:
    base: dict[str, Any] = {"now": T0 + 1, "settled": True, "last_run": T0 + 0.9, "leader_contact_age": 0.1}
    return GuardFacts(**(base | overrides))


def test_admit_serves_when_nothing_is_wrong() -> None:
    assert admit(POLICY, serving_state(), "web", None, facts()) is None


def test_a_resync_half_way_fences() -> None:
    fence = admit(POLICY, serving_state(), "web", None, facts(settled=False))
    assert fence is not None and fence.cause == "resync_in_progress" and fence.since == T0 + 1


def test_a_node_that_did_not_run_for_longer_than_the_grace_fences_per_consumer() -> None:
    stalled = facts(now=T0 + 6, last_run=T0 + 1)
    web = admit(POLICY, serving_state(), "web", None, stalled)
    assert web is not None and web.cause == "resync_stalled" and web.since == T0 + 1 and "5.0s" in web.message
    assert admit(POLICY, serving_state(), "batch", None, stalled) is None  # its grace is 10 s


def test_a_leader_not_heard_from_for_longer_than_the_grace_fences() -> None:
    fence = admit(POLICY, serving_state(), "web", None, facts(leader_contact_age=3.0))
    assert fence is not None and fence.cause == "no_quorum" and fence.since == pytest.approx(T0 - 2)
    assert admit(POLICY, serving_state(), "batch", None, facts(leader_contact_age=3.0)) is None


def test_admit_falls_through_to_the_state_and_fails_closed() -> None:
    fence = admit(POLICY, initial_state(POLICY, T0), "web", None, facts())
    assert fence is not None and fence.table == "t" and fence.cause == "not_synced"
    unknown = admit(POLICY, serving_state(), "nobody", None, facts())
    assert unknown is not None and unknown.cause == "unknown_consumer"


def test_corrupt_table_is_a_policy_fence_with_the_consumers_kind() -> None:
    fence = corrupt_table(POLICY, "batch", "KeyError: 'x'", T0)
    assert fence.cause == "corrupt_table" and fence.kind == "application" and "KeyError" in fence.message


def test_an_app_mismatch_fences_every_consumer_until_it_matches() -> None:
    decision = decide(POLICY, serving_state(), AppChecked("this node runs proxy 1.0"), T0 + 1)
    assert isinstance(decision.events[0], AppMismatched)
    assert {type(e) for e in decision.events[1:]} == {FenceRaised}
    assert {f.cause for f in decision.state.fences.values()} == {"app_mismatch"}
    assert decide(POLICY, decision.state, AppChecked("this node runs proxy 1.0"), T0 + 2).events == []
    back = decide(POLICY, decision.state, AppChecked(None), T0 + 3)
    assert isinstance(back.events[0], AppMatched) and {type(e) for e in back.events[1:]} == {FenceLifted}
    assert back.state.fences == {}


def test_typed_events_have_a_wire_form_on_the_wall_clock() -> None:
    decision = decide(POLICY, serving_state(), AppChecked("x"), T0 + 1)
    raised = decision.events[1]
    assert isinstance(raised, FenceRaised) and raised.fence.since == T0 + 1
    wire = raised.to_dict(clock_offset=5000.0)
    assert wire["type"] == "fenced" and wire["fence"]["since"] == T0 + 5001 and wire["fence"]["cause"] == "app_mismatch"


class _Store:
    """Just what BladeRuntime's guard reads of a store."""

    def add_load_listener(self, fn: Any) -> None:
        pass

    def add_change_listener(self, fn: Any) -> None:
        pass

    def last_leader_contact_age(self) -> float:
        return 0.0


async def test_the_runtime_guard_runs_on_the_injected_clock() -> None:
    now = [500.0]
    runtime = BladeRuntime("n1", _Store(), policy=POLICY, clock=lambda: now[0])  # type: ignore[arg-type]
    runtime.fence_state = serving_state()
    runtime.last_iteration = runtime.last_heartbeat = 500.0
    await runtime.guard("web")  # no time has passed on the injected clock
    now[0] += 3.0  # the node did not run for 3 s: past web's 2 s grace
    with pytest.raises(Fenced) as info:
        await runtime.guard("web")
    assert info.value.fence.cause == "resync_stalled" and info.value.fence.since == 500.0
    assert info.value.fence.to_dict(info.value.clock_offset)["since"] == pytest.approx(500.0 + runtime.clock_offset)
    await runtime.guard("batch")  # 10 s grace
