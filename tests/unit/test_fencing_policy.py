"""Unit and property tests of the pure fencing policy (``fencing.decide`` and ``guard``).

Time is a plain float passed in; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencing import (
    CaughtUp,
    Decision,
    FenceEvent,
    FencePolicy,
    FenceState,
    LagObserved,
    Outcome,
    QuorumChanged,
    Reset,
    ResyncFailed,
    ResyncOk,
    ResyncRunOk,
    Tick,
    backing_off,
    decide,
    due_for_retry,
    guard,
    initial_state,
)
from fencing._policy import _decide_in_full, _stays_current, _time_free
from tests.ontap import PROTOCOLS, default_policy

POLICY = default_policy()
TABLES = sorted(POLICY.tables())
T0 = 1000.0


def fenced(state: FenceState) -> set[str]:
    return {p for p in PROTOCOLS if guard(state, p) is not None}


def dicts(events: Iterable[FenceEvent]) -> list[dict[str, Any]]:
    """The wire form of typed events (what the node's event log shows)."""
    return [e.to_dict() for e in events]


def run(policy: FencePolicy, state: FenceState, steps: Iterable[tuple[Outcome, float]]) -> FenceState:
    for outcome, now in steps:
        state = decide(policy, state, outcome, now).state
    return state


def synced(policy: FencePolicy = POLICY, now: float = T0) -> FenceState:
    """Caught up with the leader, then every table resynced cleanly at ``now``."""
    state = initial_state(policy, now)
    return run(policy, state, [(CaughtUp(0), now)] + [(ResyncOk(t, 1), now) for t in sorted(policy.tables())])


def catching_up(state: FenceState) -> dict[str, str]:
    """protocol -> the table its catching_up fence names."""
    return {p: f.table for p, f in state.fences.items() if f.cause == "catching_up"}


def fail(table: str, cause: str = "error", revision: int = 2) -> ResyncFailed:
    return ResyncFailed(table, cause, f"{table} broke", revision)


# ------------------------------------------------------------------ start-up and clean resyncs


def test_default_policy_dependencies() -> None:
    assert POLICY.dependencies == {
        "nfs": {"vservers", "lifs", "export_rules", "vldb", "volumes"},
        "cifs": {"vservers", "lifs", "cifs_shares", "vldb", "volumes"},
        "iscsi": {"vservers", "lifs", "volumes"},
    }
    assert TABLES == ["cifs_shares", "export_rules", "lifs", "vldb", "volumes", "vservers"]
    assert default_policy(max_lag_seconds=1.0).max_lag_seconds == 1.0
    custom = default_policy(dependencies={"nfs": frozenset({"x"})})
    assert custom.tables() == {"x"}


def test_initial_state_fences_every_protocol_until_synced() -> None:
    state = initial_state(POLICY, T0)
    assert set(state.fences) == set(PROTOCOLS) == fenced(state)
    for fence in state.fences.values():
        assert fence.cause == "not_synced" and fence.since == T0 and fence.vservers is None
    assert all(not h.ok and h.cause == "not_synced" for h in state.tables.values())
    assert set(state.tables) == set(TABLES)
    assert state.caught_up is False and state.required_revision == 0 and state.quorum_lost_since is None
    # Never-synced tables are not "failed with backoff": they are retried by the load run.
    assert due_for_retry(state, T0 + 100) == frozenset() and backing_off(state, T0) == frozenset()


def test_resync_ok_for_every_table_unfences_all() -> None:
    decision = decide(POLICY, initial_state(POLICY, T0), CaughtUp(0), T0)
    assert dicts(decision.events) == [{"type": "caught_up", "revision": 0}]
    state, events = decision.state, []
    for table in TABLES:
        assert fenced(state)
        decision = decide(POLICY, state, ResyncOk(table, 7), T0 + 1)
        state, events = decision.state, events + dicts(decision.events)
    assert fenced(state) == set() and state.fences == {}
    assert sorted(e["protocol"] for e in events if e["type"] == "unfenced") == sorted(PROTOCOLS)
    assert all(h.ok and h.revision == 7 and h.cause is None for h in state.tables.values())


def test_protocol_unfences_once_its_own_tables_are_synced() -> None:
    state = decide(POLICY, initial_state(POLICY, T0), CaughtUp(0), T0).state
    state = run(POLICY, state, [(ResyncOk(t, 1), T0) for t in ("vservers", "lifs", "volumes")])
    assert fenced(state) == {"nfs", "cifs"}  # iscsi needs only these three


# ------------------------------------------------------------------ which failure fences what


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("export_rules", {"nfs"}),
        ("cifs_shares", {"cifs"}),
        ("vservers", {"nfs", "cifs", "iscsi"}),
        ("lifs", {"nfs", "cifs", "iscsi"}),
        ("volumes", {"nfs", "cifs", "iscsi"}),
        ("vldb", {"nfs", "cifs"}),
    ],
)
def test_a_failed_table_fences_exactly_the_protocols_that_depend_on_it(table: str, expected: set[str]) -> None:
    decision = decide(POLICY, synced(), fail(table, "timeout"), T0 + 1)
    assert fenced(decision.state) == expected
    for protocol in expected:
        fence = decision.state.fences[protocol]
        assert (fence.table, fence.cause, fence.message, fence.since, fence.revision) == (
            table,
            "timeout",
            f"{table} broke",
            T0 + 1,
            2,
        )
    assert [e["type"] for e in dicts(decision.events)] == ["resync_failed"] + ["fenced"] * len(expected)
    assert dicts(decision.events)[0] == {
        "type": "resync_failed",
        "table": table,
        "cause": "timeout",
        "message": f"{table} broke",
        "revision": 2,
        "failures": 1,
    }


def test_a_failure_of_a_table_no_protocol_depends_on_changes_nothing() -> None:
    state = synced()
    decision = decide(POLICY, state, fail("not_a_table"), T0 + 1)
    assert decision.state == state and decision.summary == "steady"


def test_clean_resync_lifts_the_fence_and_says_so() -> None:
    state = decide(POLICY, synced(), fail("export_rules"), T0 + 1).state
    decision = decide(POLICY, state, ResyncOk("export_rules", 3), T0 + 2)
    assert fenced(decision.state) == set()
    (event,) = dicts(decision.events)
    assert event["type"] == "unfenced" and event["protocol"] == "nfs"
    assert event["was"]["table"] == "export_rules" and event["was"]["cause"] == "error"
    assert decision.summary == "unfenced:nfs"
    assert (
        decision.state.tables["export_rules"]
        == decide(POLICY, synced(), ResyncOk("export_rules", 3), 0).state.tables["export_rules"]
    )


def test_fence_keeps_its_original_since_while_the_cause_is_unchanged() -> None:
    state = decide(POLICY, synced(), fail("export_rules"), T0 + 1).state
    for i in range(2, 6):
        decision = decide(POLICY, state, fail("export_rules"), T0 + i)
        state = decision.state
        assert state.fences["nfs"].since == T0 + 1
        assert [e["type"] for e in dicts(decision.events)] == ["resync_failed"]
    assert state.tables["export_rules"].failing_since == T0 + 1
    assert state.tables["export_rules"].failures == 5


def test_a_new_cause_changes_the_fence() -> None:
    state = decide(POLICY, synced(), fail("export_rules", "error"), T0 + 1).state
    decision = decide(POLICY, state, fail("export_rules", "verification"), T0 + 2)
    assert decision.state.fences["nfs"].cause == "verification"
    assert decision.state.fences["nfs"].since == T0 + 1  # failing since the first failure
    assert [e["type"] for e in dicts(decision.events)] == ["resync_failed", "fence_changed"]


def test_the_first_failing_table_in_name_order_names_the_fence() -> None:
    state = run(POLICY, synced(), [(fail("vservers"), T0 + 1), (fail("export_rules"), T0 + 2)])
    assert state.fences["nfs"].table == "export_rules"
    assert state.fences["iscsi"].table == "vservers"
    state = decide(POLICY, state, ResyncOk("export_rules", 5), T0 + 3).state
    assert state.fences["nfs"].table == "vservers"
    state = decide(POLICY, state, ResyncOk("vservers", 5), T0 + 4).state
    assert fenced(state) == set()


# ------------------------------------------------------------------ backoff and retries


def test_backoff_doubles_from_100ms_up_to_the_30s_cap() -> None:
    delays = [POLICY.backoff(n) for n in range(1, 13)]
    assert delays[:9] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6])
    assert delays[9:] == [30.0, 30.0, 30.0]
    assert POLICY.backoff(0) == pytest.approx(0.1)
    assert POLICY.backoff(1000) == 30.0


def test_retry_times_follow_the_backoff_and_reset_makes_them_due_now() -> None:
    state = synced()
    for n in range(1, 12):
        now = T0 + n * 100
        state = decide(POLICY, state, fail("vldb"), now).state
        health = state.tables["vldb"]
        assert health.failures == n
        assert health.retry_at == pytest.approx(now + min(30.0, 0.1 * 2 ** (n - 1)))
    now = T0 + 1100
    assert backing_off(state, now) == {"vldb"} and due_for_retry(state, now) == frozenset()
    assert due_for_retry(state, now + 30) == {"vldb"} and backing_off(state, now + 30) == frozenset()

    decision = decide(POLICY, state, Reset("leader_change"), now + 1)
    assert decision.state.tables["vldb"].retry_at == now + 1
    assert due_for_retry(decision.state, now + 1) == {"vldb"}
    assert decision.state.tables["vldb"].failures == 11  # a reset does not forgive
    assert fenced(decision.state) == {"nfs", "cifs"}
    assert decision.summary == "steady"
    # Healthy tables are untouched by a reset.
    assert decision.state.tables["lifs"] == state.tables["lifs"]


def test_due_and_backing_off_only_list_failed_tables() -> None:
    state = decide(POLICY, synced(), fail("lifs"), T0).state
    assert due_for_retry(state, T0 + 0.1) == {"lifs"}
    assert backing_off(state, T0 + 0.05) == {"lifs"}
    assert due_for_retry(state, T0 + 0.05) == frozenset()


# ------------------------------------------------------------------ lag


def test_lag_over_the_revision_bound_fences_with_cause_lag() -> None:
    decision = decide(POLICY, synced(), LagObserved("vservers", 10_001, 0.0, 50), T0 + 1)
    assert fenced(decision.state) == set(PROTOCOLS)
    assert {f.cause for f in decision.state.fences.values()} == {"lag"}
    assert decision.state.fences["nfs"].revision == 50
    assert decision.state.tables["vservers"].cause == "lag"
    assert "10001 revision(s)" in decision.state.fences["nfs"].message
    assert dicts(decision.events)[0]["type"] == "resync_failed" and dicts(decision.events)[0]["cause"] == "lag"


def test_lag_over_the_time_bound_fences() -> None:
    decision = decide(POLICY, synced(), LagObserved("cifs_shares", 1, 5.5, 9), T0 + 1)
    assert fenced(decision.state) == {"cifs"}
    assert decision.state.fences["cifs"].cause == "lag"
    assert "5.5s behind" in decision.state.fences["cifs"].message


@pytest.mark.parametrize(("revisions", "seconds"), [(0, 0.0), (10_000, 5.0), (3, 4.9)])
def test_lag_within_the_bound_changes_nothing(revisions: int, seconds: float) -> None:
    state = synced()
    decision = decide(POLICY, state, LagObserved("vservers", revisions, seconds, 9), T0 + 1)
    assert decision.state is state and dicts(decision.events) == []


def test_lag_is_ignored_while_the_table_is_already_failing() -> None:
    state = decide(POLICY, synced(), fail("export_rules", "timeout"), T0 + 1).state
    decision = decide(POLICY, state, LagObserved("export_rules", 50_000, 60.0, 9), T0 + 2)
    assert decision.state is state and dicts(decision.events) == []
    assert decision.state.fences["nfs"].cause == "timeout"
    # Also before the first sync: the table is not_synced, not lagging.
    fresh = initial_state(POLICY, T0)
    assert decide(POLICY, fresh, LagObserved("vservers", 50_000, 60.0, 9), T0).state is fresh


def test_lag_limits_are_configurable() -> None:
    policy = default_policy(max_lag_revisions=5, max_lag_seconds=0.5)
    state = synced(policy)
    assert fenced(decide(policy, state, LagObserved("lifs", 6, 0.0, 9), T0).state) == set(PROTOCOLS)
    assert fenced(decide(policy, state, LagObserved("lifs", 0, 0.6, 9), T0).state) == set(PROTOCOLS)
    assert fenced(decide(policy, state, LagObserved("lifs", 5, 0.5, 9), T0).state) == set()


# ------------------------------------------------------------------ quorum


def test_quorum_loss_fences_only_after_the_grace_period() -> None:
    decision = decide(POLICY, synced(), QuorumChanged(False), T0)
    assert dicts(decision.events) == [{"type": "quorum_lost"}]
    state = decision.state
    assert state.quorum_lost_since == T0
    assert fenced(decide(POLICY, state, Tick(), T0 + 4.99).state) == set()
    decision = decide(POLICY, state, Tick(), T0 + 5.0)
    assert fenced(decision.state) == set(PROTOCOLS)
    for fence in decision.state.fences.values():
        assert (fence.cause, fence.table, fence.since) == ("no_quorum", "*", T0)
        assert "grace 5s" in fence.message
    assert decision.summary == "fenced:cifs,fenced:iscsi,fenced:nfs"
    # A second "no quorum" does not restart the clock.
    again = decide(POLICY, state, QuorumChanged(False), T0 + 3)
    assert again.state.quorum_lost_since == T0 and again.events == []


def test_quorum_grace_is_per_protocol() -> None:
    policy = default_policy(quorum_grace={"nfs": 1.0, "cifs": 10.0, "iscsi": 0.0})
    state = decide(policy, synced(policy), QuorumChanged(False), T0).state
    assert fenced(state) == {"iscsi"}
    assert fenced(decide(policy, state, Tick(), T0 + 1.0).state) == {"nfs", "iscsi"}
    assert fenced(decide(policy, state, Tick(), T0 + 9.9).state) == {"nfs", "iscsi"}
    assert fenced(decide(policy, state, Tick(), T0 + 10.0).state) == set(PROTOCOLS)


def test_quorum_regained_before_the_grace_needs_no_fence() -> None:
    state = decide(POLICY, synced(), QuorumChanged(False), T0).state
    decision = decide(POLICY, state, QuorumChanged(True), T0 + 2)
    assert dicts(decision.events) == [{"type": "quorum_regained"}]
    assert fenced(decision.state) == set()
    # A blip within the grace period does not make the node catch up again.
    assert decision.state.caught_up is True and decision.state.required_revision == 0
    assert fenced(decide(POLICY, decision.state, Tick(), T0 + 100).state) == set()


def test_after_a_fenced_quorum_loss_the_node_must_catch_up_again() -> None:
    state = run(POLICY, synced(), [(QuorumChanged(False), T0), (Tick(), T0 + 6)])
    assert fenced(state) == set(PROTOCOLS)
    assert {f.cause for f in state.fences.values()} == {"no_quorum"}
    decision = decide(POLICY, state, QuorumChanged(True), T0 + 7)
    state = decision.state
    assert decision.summary == "quorum_regained,fence_changed:cifs,fence_changed:iscsi,fence_changed:nfs"
    assert state.quorum_lost_since is None and state.caught_up is False
    assert catching_up(state) == dict.fromkeys(PROTOCOLS, "*")
    for fence in state.fences.values():
        assert (fence.since, fence.revision) == (T0 + 7, 0)
        assert fence.message == "not yet caught up with the leader's commit index"
    assert decide(POLICY, state, Tick(), T0 + 100).state.fences == state.fences  # 'since' kept

    # Resyncs alone do not unfence: the node has not caught up with the leader yet.
    state = run(POLICY, state, [(ResyncOk(t, 9), T0 + 8) for t in ("vservers", "volumes")])
    assert catching_up(state) == dict.fromkeys(PROTOCOLS, "*")

    decision = decide(POLICY, state, CaughtUp(9), T0 + 9)
    state = decision.state
    assert dicts(decision.events)[0] == {"type": "caught_up", "revision": 9}
    assert decision.summary == "caught_up,fence_changed:cifs,fence_changed:iscsi,fence_changed:nfs"
    assert state.caught_up is True and state.required_revision == 9
    # Each protocol now waits for the first of its tables (in name order) still below 9.
    assert catching_up(state) == {"nfs": "export_rules", "cifs": "cifs_shares", "iscsi": "lifs"}
    assert state.fences["nfs"].message == "export_rules is at revision 1; serving resumes at 9"
    assert state.fences["nfs"].revision == 1 and state.fences["nfs"].since == T0 + 9

    decision = decide(POLICY, state, ResyncOk("lifs", 9), T0 + 10)
    assert fenced(decision.state) == {"nfs", "cifs"}  # iscsi's tables are all at 9 now
    assert decision.summary == "unfenced:iscsi"
    state = run(POLICY, decision.state, [(ResyncOk("vldb", 8), T0 + 11), (ResyncOk("export_rules", 9), T0 + 11)])
    assert catching_up(state) == {"nfs": "vldb", "cifs": "cifs_shares"}  # 8 is not enough
    state = decide(POLICY, state, ResyncOk("vldb", 10), T0 + 12).state
    assert fenced(state) == {"cifs"}
    decision = decide(POLICY, state, ResyncOk("cifs_shares", 9), T0 + 13)
    assert fenced(decision.state) == set() and decision.summary == "unfenced:cifs"


def test_a_table_failure_while_rejoining_takes_over_the_fence() -> None:
    state = run(POLICY, synced(), [(QuorumChanged(False), T0), (Tick(), T0 + 6), (QuorumChanged(True), T0 + 7)])
    state = decide(POLICY, state, fail("vservers"), T0 + 8).state
    assert {(f.table, f.cause) for f in state.fences.values()} == {("vservers", "error")}
    state = decide(POLICY, state, ResyncOk("vservers", 9), T0 + 9).state
    # vservers is fine now, but the node has still not caught up since the rejoin.
    assert catching_up(state) == dict.fromkeys(PROTOCOLS, "*")
    state = decide(POLICY, state, CaughtUp(9), T0 + 10).state
    assert catching_up(state) == {"nfs": "export_rules", "cifs": "cifs_shares", "iscsi": "lifs"}


# ------------------------------------------------------------------ catching up with the leader


def test_all_tables_synced_without_caught_up_stays_fenced() -> None:
    state = run(POLICY, initial_state(POLICY, T0), [(ResyncOk(t, 5), T0 + 1) for t in TABLES])
    assert all(h.ok for h in state.tables.values())
    assert fenced(state) == set(PROTOCOLS)
    assert catching_up(state) == dict.fromkeys(PROTOCOLS, "*")
    for fence in state.fences.values():
        assert fence.message == "not yet caught up with the leader's commit index" and fence.revision == 0
    assert decide(POLICY, state, Tick(), T0 + 100).state.fences == state.fences
    decision = decide(POLICY, state, CaughtUp(5), T0 + 2)
    assert decision.summary == "caught_up,unfenced:cifs,unfenced:iscsi,unfenced:nfs"
    assert dicts(decision.events)[0] == {"type": "caught_up", "revision": 5}
    assert decision.state.fences == {} and decision.state.required_revision == 5


def test_caught_up_fences_each_protocol_on_its_first_lagging_table() -> None:
    state = initial_state(POLICY, T0)
    state = run(POLICY, state, [(ResyncOk(t, 5), T0) for t in TABLES])
    state = run(POLICY, state, [(ResyncOk(t, 20), T0) for t in ("cifs_shares", "export_rules", "lifs")])
    decision = decide(POLICY, state, CaughtUp(20), T0 + 1)
    state = decision.state
    assert fenced(state) == set(PROTOCOLS)
    assert catching_up(state) == {"nfs": "vldb", "cifs": "vldb", "iscsi": "volumes"}
    fence = state.fences["iscsi"]
    assert (fence.cause, fence.since, fence.revision) == ("catching_up", T0 + 1, 5)
    assert fence.message == "volumes is at revision 5; serving resumes at 20"
    assert decision.summary == "caught_up,fence_changed:cifs,fence_changed:iscsi,fence_changed:nfs"


def test_reaching_the_required_revision_unfences_exactly_that_protocol() -> None:
    state = run(POLICY, initial_state(POLICY, T0), [(CaughtUp(10), T0)] + [(ResyncOk(t, 4), T0) for t in TABLES])
    assert catching_up(state) == {"nfs": "export_rules", "cifs": "cifs_shares", "iscsi": "lifs"}
    state = run(POLICY, state, [(ResyncOk("lifs", 10), T0 + 1), (ResyncOk("volumes", 12), T0 + 1)])
    assert catching_up(state) == {"nfs": "export_rules", "cifs": "cifs_shares", "iscsi": "vservers"}
    decision = decide(POLICY, state, ResyncOk("vservers", 9), T0 + 2)  # one short
    assert fenced(decision.state) == set(PROTOCOLS)
    decision = decide(POLICY, decision.state, ResyncOk("vservers", 10), T0 + 3)
    assert decision.summary == "unfenced:iscsi"
    assert fenced(decision.state) == {"nfs", "cifs"}
    assert catching_up(decision.state) == {"nfs": "export_rules", "cifs": "cifs_shares"}


def test_table_failures_take_precedence_over_catching_up() -> None:
    # Before catching up: a never-synced table names the fence, not the catch-up.
    state = decide(POLICY, initial_state(POLICY, T0), ResyncOk("lifs", 1), T0).state
    assert {f.cause for f in state.fences.values()} == {"not_synced"}
    state = decide(POLICY, state, fail("lifs"), T0 + 1).state
    assert state.fences["iscsi"].cause == "error" and state.fences["iscsi"].table == "lifs"
    state = run(POLICY, state, [(ResyncOk(t, 1), T0 + 2) for t in TABLES if t != "lifs"])
    assert {(f.table, f.cause) for f in state.fences.values()} == {("lifs", "error")}
    # After catching up, with every table behind the required revision.
    state = decide(POLICY, state, CaughtUp(5), T0 + 3).state
    assert {(f.table, f.cause) for f in state.fences.values()} == {("lifs", "error")}
    state = decide(POLICY, state, ResyncOk("lifs", 5), T0 + 4).state
    assert catching_up(state) == {"nfs": "export_rules", "cifs": "cifs_shares", "iscsi": "volumes"}
    decision = decide(POLICY, state, fail("vservers", "timeout"), T0 + 5)
    assert {(f.table, f.cause) for f in decision.state.fences.values()} == {("vservers", "timeout")}
    # So does a quorum loss past its grace period.
    state = run(POLICY, state, [(QuorumChanged(False), T0 + 6), (Tick(), T0 + 11)])
    assert {f.cause for f in state.fences.values()} == {"no_quorum"}


def test_caught_up_is_idempotent_and_the_required_revision_never_decreases() -> None:
    state = decide(POLICY, synced(), CaughtUp(1), T0 + 1).state
    assert state.caught_up is True and state.required_revision == 1 and fenced(state) == set()
    again = decide(POLICY, state, CaughtUp(1), T0 + 2)
    assert again.state == state and again.events == []
    lower = decide(POLICY, state, CaughtUp(0), T0 + 3)
    assert lower.state == state and lower.summary == "steady"
    # A later, higher revision is required without a second caught_up event.
    higher = decide(POLICY, state, CaughtUp(3), T0 + 4)
    assert higher.state.required_revision == 3
    assert higher.summary == "fenced:cifs,fenced:iscsi,fenced:nfs"
    assert catching_up(higher.state) == {"nfs": "export_rules", "cifs": "cifs_shares", "iscsi": "lifs"}
    assert decide(POLICY, higher.state, CaughtUp(2), T0 + 5).state.required_revision == 3
    # Losing caught_up on a rejoin keeps the required revision.
    state = run(
        POLICY, higher.state, [(QuorumChanged(False), T0 + 6), (Tick(), T0 + 20), (QuorumChanged(True), T0 + 21)]
    )
    assert state.caught_up is False and state.required_revision == 3
    decision = decide(POLICY, state, CaughtUp(2), T0 + 22)
    assert dicts(decision.events)[0] == {"type": "caught_up", "revision": 2}
    assert decision.state.required_revision == 3


# ------------------------------------------------------------------ thresholds


def test_failures_to_fence_needs_that_many_failures_in_a_row() -> None:
    policy = default_policy(failures_to_fence=3)
    state = synced(policy)
    for n in (1, 2):
        state = decide(policy, state, fail("export_rules"), T0 + n).state
        assert fenced(state) == set(), n
    decision = decide(policy, state, fail("export_rules"), T0 + 3)
    assert fenced(decision.state) == {"nfs"}
    assert decision.state.fences["nfs"].since == T0 + 1
    # A clean resync resets the count.
    state = decide(policy, decision.state, ResyncOk("export_rules", 3), T0 + 4).state
    state = decide(policy, state, fail("export_rules"), T0 + 5).state
    assert fenced(state) == set()


def test_failures_to_fence_does_not_delay_the_first_sync() -> None:
    policy = default_policy(failures_to_fence=3)
    assert fenced(initial_state(policy, T0)) == set(PROTOCOLS)


def test_fence_after_seconds_fences_a_table_failing_for_long_enough() -> None:
    policy = default_policy(failures_to_fence=100, fence_after_seconds=2.0)
    state = decide(policy, synced(policy), fail("cifs_shares"), T0).state
    assert fenced(state) == set()
    assert fenced(decide(policy, state, Tick(), T0 + 1.9).state) == set()
    decision = decide(policy, state, Tick(), T0 + 2.0)
    assert fenced(decision.state) == {"cifs"} and decision.summary == "fenced:cifs"
    assert decision.state.fences["cifs"].since == T0
    # The second failure also counts from the first.
    assert fenced(decide(policy, state, fail("cifs_shares"), T0 + 2.5).state) == {"cifs"}


# ------------------------------------------------------------------ guard and summary


def test_guard_fails_closed_for_an_unknown_protocol() -> None:
    state = synced()
    fence = guard(state, "smb3")
    assert fence is not None and fence.cause == "unknown_consumer" and "smb3" in fence.message
    assert guard(state, "nfs") is None
    assert guard(state, "nfs", "vs1") is None


def test_guard_applies_a_node_wide_fence_to_every_vserver() -> None:
    state = decide(POLICY, synced(), fail("export_rules"), T0).state
    for vserver in (None, "vs1", "vs2"):
        fence = guard(state, "nfs", vserver)
        assert fence is not None and fence.table == "export_rules"
    assert guard(state, "cifs", "vs1") is None


def test_fence_to_dict() -> None:
    fence = decide(POLICY, synced(), fail("lifs"), T0).state.fences["iscsi"]
    assert fence.to_dict() == {
        "protocol": "iscsi",
        "kind": "protocol",
        "vservers": None,
        "table": "lifs",
        "cause": "error",
        "message": "lifs broke",
        "since": T0,
        "revision": 2,
    }


def test_decision_summary() -> None:
    assert Decision(synced(), []).summary == "steady"
    decision = decide(POLICY, synced(), fail("vldb"), T0)
    assert decision.summary == "resync_failed:vldb,fenced:cifs,fenced:nfs"
    decision = decide(POLICY, decision.state, ResyncOk("vldb", 3), T0)
    assert decision.summary == "unfenced:cifs,unfenced:nfs"
    assert decide(POLICY, synced(), QuorumChanged(False), T0).summary == "quorum_lost"
    assert decide(POLICY, synced(), Tick(), T0).summary == "steady"


# ------------------------------------------------------------------ properties

# Small revision ranges, and "load events" that resync every table at one revision, so
# that histories often reach "caught up with every table at the required revision".
REVISIONS = st.integers(0, 10)


def outcomes(tables: list[str]) -> st.SearchStrategy[Outcome]:
    return st.one_of(
        st.builds(ResyncOk, st.sampled_from(tables), REVISIONS),
        st.builds(
            ResyncFailed,
            st.sampled_from(tables),
            st.sampled_from(["error", "timeout", "verification"]),
            st.just("boom"),
            REVISIONS,
        ),
        st.builds(
            LagObserved,
            st.sampled_from(tables),
            st.integers(0, 20_000),
            st.floats(0, 10, allow_nan=False),
            REVISIONS,
        ),
        st.builds(QuorumChanged, st.booleans()),
        st.builds(CaughtUp, REVISIONS),
        st.builds(Reset, st.just("leader_change")),
        st.just(Tick()),
    )


OUTCOMES = outcomes(TABLES)
LOAD = REVISIONS.map(lambda revision: tuple(ResyncOk(t, revision) for t in TABLES))
BATCHES = st.one_of(OUTCOMES.map(lambda outcome: (outcome,)), LOAD)
STEPS = st.lists(st.tuples(BATCHES, st.floats(0, 3, allow_nan=False)), max_size=40)
#: As STEPS, and outcomes also name a blade table no consumer depends on.
STEPS_WITH_AN_UNWATCHED_TABLE = st.lists(
    st.tuples(
        st.one_of(outcomes([*TABLES, "unwatched"]).map(lambda outcome: (outcome,)), LOAD),
        st.floats(0, 3, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(STEPS)
def test_fencing_invariants_over_random_histories(batches: list[tuple[tuple[Outcome, ...], float]]) -> None:
    now = T0
    state = initial_state(POLICY, now)
    failing = set(TABLES)  # tables whose last outcome was a failure (or that never synced)
    synced_at: dict[str, int] = {}  # table -> revision of its last ResyncOk, while not failing
    caught_up, required = False, 0
    steps = [(outcome, dt if i == 0 else 0.0) for outcomes, dt in batches for i, outcome in enumerate(outcomes)]
    for outcome, dt in steps:
        now += dt
        previous, before = state, copy.deepcopy(state)
        decision = decide(POLICY, state, outcome, now)
        assert state == before  # (c) the input state is not mutated
        assert decide(POLICY, before, outcome, now) == decision  # (d) deterministic
        state = decision.state

        if isinstance(outcome, ResyncOk):
            failing.discard(outcome.table)
            synced_at[outcome.table] = outcome.revision
        elif isinstance(outcome, ResyncFailed):
            failing.add(outcome.table)
        elif isinstance(outcome, LagObserved) and (outcome.revisions > 10_000 or outcome.seconds > 5.0):
            failing.add(outcome.table)
        elif isinstance(outcome, CaughtUp):
            assert any(e["type"] == "caught_up" for e in dicts(decision.events)) == (not caught_up)
            caught_up, required = True, max(required, outcome.revision)
        elif isinstance(outcome, QuorumChanged) and outcome.has_quorum and before.quorum_lost_since is not None:
            if now - before.quorum_lost_since >= min(POLICY.quorum_grace.values()):
                caught_up = False  # a rejoin after a quorum loss longer than the grace period
        for table in failing:
            synced_at.pop(table, None)
        assert (state.caught_up, state.required_revision) == (caught_up, required)

        quorum = state.quorum_lost_since is None
        within_grace = quorum or now - state.quorum_lost_since < 5.0
        for protocol in PROTOCOLS:
            deps = POLICY.dependencies[protocol]
            if deps & failing:  # (a) fail closed
                assert guard(state, protocol) is not None, (protocol, deps & failing)
            if quorum and not caught_up:  # (a) ...and until caught up with the leader
                assert guard(state, protocol) is not None, protocol
            current = all(synced_at.get(t, -1) >= required for t in deps)
            if current and caught_up and within_grace:
                assert guard(state, protocol) is None, protocol  # (b) no fence without a reason
            elif quorum and not current:
                assert guard(state, protocol) is not None, protocol  # (a) not resynced far enough
        assert {t for t, h in state.tables.items() if not h.ok} == failing
        if state.quorum_lost_since is not None and now - state.quorum_lost_since >= 5.0:
            # A lag reading that is not news returns the input state as is, without
            # re-evaluating time-based fences; the next outcome (at worst a Tick) does.
            lag_noop = isinstance(outcome, LagObserved) and state is previous and not dicts(decision.events)
            current_state = decide(POLICY, state, Tick(), now).state if lag_noop else state
            assert fenced(current_state) == set(PROTOCOLS)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(STEPS_WITH_AN_UNWATCHED_TABLE)
def test_the_shortcut_for_a_healthy_table_decides_as_the_full_computation(
    batches: list[tuple[tuple[Outcome, ...], float]],
) -> None:
    now = T0
    state = initial_state(POLICY, now)
    for batch, dt in batches:
        now += dt
        for outcome in batch:
            decision = decide(POLICY, state, outcome, now)
            assert decision == _decide_in_full(POLICY, state, outcome, now)
            state = decision.state


#: A blade worker's run: clean outcomes of several tables (some repeated, some of a
#: table no consumer depends on), at revisions that may stay current or fall short.
RUNS = st.lists(st.builds(ResyncOk, st.sampled_from([*TABLES, "unwatched"]), REVISIONS), max_size=8).map(
    lambda oks: ResyncRunOk(tuple(oks))
)


def _fold(state: FenceState, oks: Iterable[ResyncOk], now: float) -> Decision:
    events: list[FenceEvent] = []
    for ok in oks:
        decision = decide(POLICY, state, ok, now)
        state = decision.state
        events.extend(decision.events)
    return Decision(state, events)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(RUNS, OUTCOMES, LOAD.map(ResyncRunOk)), st.floats(0, 3, allow_nan=False)), max_size=40)
)
def test_a_run_of_clean_outcomes_decides_as_each_of_them_in_turn(steps: list[tuple[Outcome, float]]) -> None:
    now = T0
    state = initial_state(POLICY, now)
    for outcome, dt in steps:
        now += dt
        decision = decide(POLICY, state, outcome, now)
        assert decision == _decide_in_full(POLICY, state, outcome, now)
        if isinstance(outcome, ResyncRunOk):
            assert decision == _fold(state, outcome.oks, now)
        state = decision.state


def test_a_run_that_keeps_every_table_current_is_one_step() -> None:
    state = synced()
    run_ok = ResyncRunOk(tuple(ResyncOk(t, 5) for t in [*TABLES, "unwatched"]))
    decision = decide(POLICY, state, run_ok, T0 + 1)
    assert decision.events == [] and decision.state.fences == state.fences
    assert {t: h.synced_revision for t, h in decision.state.tables.items()} == dict.fromkeys(TABLES, 5)
    # Nothing watched in the run: the very same state.
    assert decide(POLICY, state, ResyncRunOk((ResyncOk("unwatched", 5),)), T0 + 1).state is state


def test_the_shortcut_is_taken_only_while_time_cannot_change_a_fence() -> None:
    state = synced()
    revision = state.tables[TABLES[0]].synced_revision + 1
    assert _time_free(state) and _stays_current(state, ResyncOk(TABLES[0], revision))
    assert not _stays_current(state, ResyncOk(TABLES[0], revision - 2))  # a step back may fence
    assert not _time_free(decide(POLICY, state, QuorumChanged(False), T0).state)
    assert not _time_free(decide(POLICY, state, ResyncFailed(TABLES[1], "error", "boom", revision), T0).state)
    assert decide(POLICY, state, Tick(), T0 + 1).state is state


def test_rejoin_after_a_loss_past_grace_resets_catch_up_even_without_a_tick_or_behind_a_table_fence() -> None:
    state = synced()
    # Lost at T0 and regained much later, with no tick between: still a rejoin.
    state = run(POLICY, state, [(QuorumChanged(False), T0), (QuorumChanged(True), T0 + 100)])
    assert state.caught_up is False and fenced(state) == set(PROTOCOLS)
    # A table failure hiding the no_quorum fence does not skip the catch-up either.
    state = synced()
    state = run(
        POLICY,
        state,
        [
            (fail("vservers"), T0),
            (QuorumChanged(False), T0 + 1),
            (Tick(), T0 + 10),
            (QuorumChanged(True), T0 + 11),
            (ResyncOk("vservers", 5), T0 + 12),
        ],
    )
    assert state.caught_up is False and {f.cause for f in state.fences.values()} == {"catching_up"}


def test_a_failed_attempt_does_not_count_as_reaching_the_required_revision() -> None:
    policy = default_policy(failures_to_fence=3)
    state = run(policy, synced(policy), [(CaughtUp(10), T0)])
    state = run(policy, state, [(ResyncOk(t, 10), T0) for t in TABLES if t != "lifs"])
    state = run(policy, state, [(ResyncOk("lifs", 5), T0), (fail("lifs", revision=12), T0 + 1)])
    # lifs failed once (under the threshold) at 12: it has still only synced to 5.
    assert fenced(state) == set(PROTOCOLS)
    assert all(f.cause == "catching_up" and f.table == "lifs" for f in state.fences.values())


def test_a_stall_past_grace_means_catching_up_again_but_a_short_one_does_not() -> None:
    from fencing import Stalled

    state = synced()
    short = decide(POLICY, state, Stalled(1.0), T0 + 1)
    assert short.state.caught_up and fenced(short.state) == set() and short.events == []
    long = decide(POLICY, state, Stalled(6.0), T0 + 6)
    assert not long.state.caught_up and fenced(long.state) == set(PROTOCOLS)
    assert long.events[0].type == "stalled"
    assert all(f.cause == "catching_up" for f in long.state.fences.values())
