"""Vserver-scoped dependencies, client applications, and policies built from documents.

Pure: time is a float passed in; nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencing import (
    CaughtUp,
    FencePolicy,
    FenceState,
    PolicyError,
    QuorumChanged,
    ResyncFailed,
    ResyncOk,
    ScopedDependency,
    Tick,
    decide,
    guard,
    initial_state,
    policy_to_document,
)
from tests.ontap import default_policy, from_document

T0 = 1000.0
KNOWN = ["aggregates", "cifs_shares", "export_rules", "lifs", "vldb", "volumes", "vservers"]
NFS_WIDE = frozenset({"vservers", "vldb", "export_rules"})
POLICY = default_policy(
    dependencies={"nfs": NFS_WIDE, "backup": frozenset({"volumes"})},
    scoped={
        "nfs": (
            ScopedDependency(frozenset({"vs1"}), frozenset({"lifs"})),
            ScopedDependency(frozenset({"vs2", "vs3"}), frozenset({"cifs_shares", "aggregates"})),
        )
    },
    applications=frozenset({"backup"}),
)
VSERVERS = ("vs1", "vs2", "vs3", "vs4")


def run(policy: FencePolicy, state: FenceState, *outcomes: Any, now: float = T0) -> FenceState:
    for outcome in outcomes:
        state = decide(policy, state, outcome, now).state
    return state


def synced(policy: FencePolicy = POLICY) -> FenceState:
    state = initial_state(policy, T0)
    return run(policy, state, CaughtUp(0), *(ResyncOk(t, 1) for t in sorted(policy.tables())))


def fail(table: str) -> ResyncFailed:
    return ResyncFailed(table, "error", f"{table} broke", 2)


def served(state: FenceState, consumer: str = "nfs") -> set[str]:
    return {v for v in VSERVERS if guard(state, consumer, v) is None}


# ------------------------------------------------------------------ scoped dependencies


def test_a_scoped_table_failure_fences_only_its_vservers() -> None:
    state = run(POLICY, synced(), fail("lifs"))
    assert served(state) == {"vs2", "vs3", "vs4"}
    fence = guard(state, "nfs", "vs1")
    assert fence is not None and fence.vservers == frozenset({"vs1"}) and fence.table == "lifs"
    assert fence.to_dict()["vservers"] == ["vs1"]
    # A request for no particular vserver is stopped by any fence (fail closed).
    assert guard(state, "nfs") is not None


def test_scoped_failures_add_up_and_lift_one_by_one() -> None:
    state = run(POLICY, synced(), fail("lifs"), fail("aggregates"))
    assert served(state) == {"vs4"}
    assert state.fences["nfs"].table == "aggregates"  # the first failing table in name order
    state = run(POLICY, state, ResyncOk("aggregates", 3))
    assert served(state) == {"vs2", "vs3", "vs4"}
    state = run(POLICY, state, ResyncOk("lifs", 3))
    assert served(state) == set(VSERVERS) and "nfs" not in state.fences


def test_a_node_wide_failure_wins_over_a_scoped_one() -> None:
    state = run(POLICY, synced(), fail("lifs"), fail("export_rules"))
    assert served(state) == set()
    assert state.fences["nfs"].vservers is None and state.fences["nfs"].table == "export_rules"


def test_a_scoped_failure_fences_even_within_the_quorum_grace_period() -> None:
    state = run(POLICY, synced(), QuorumChanged(False), fail("lifs"), now=T0 + 1)
    assert served(state) == {"vs2", "vs3", "vs4"}
    state = run(POLICY, state, Tick(), now=T0 + 6)  # past the 5 s grace: everything
    assert served(state) == set()


def test_scoped_tables_must_reach_the_required_revision_too() -> None:
    state = run(POLICY, synced(), CaughtUp(5), *(ResyncOk(t, 5) for t in POLICY.tables() if t != "lifs"))
    assert served(state) == {"vs2", "vs3", "vs4"}
    assert state.fences["nfs"].cause == "catching_up"
    state = run(POLICY, state, ResyncOk("lifs", 5))
    assert served(state) == set(VSERVERS)


def test_an_application_is_fenced_like_a_protocol_and_says_what_it_is() -> None:
    state = run(POLICY, synced(), fail("volumes"))
    fence = guard(state, "backup")
    assert fence is not None and fence.kind == "application" and fence.to_dict()["kind"] == "application"
    assert served(state) == set(VSERVERS)  # nfs does not depend on volumes in this policy
    assert guard(state, "unknown-app") is not None  # not in the policy: fail closed


TABLES = sorted(POLICY.tables())
STEPS = st.lists(
    st.tuples(st.sampled_from(TABLES), st.booleans()),
    max_size=30,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(STEPS)
def test_scoped_fencing_invariant_over_random_histories(steps: list[tuple[str, bool]]) -> None:
    """For every vserver: nfs is served exactly when no node-wide dependency and no
    scoped dependency covering that vserver is failing."""
    state = synced()
    failing: set[str] = set()
    for table, ok in steps:
        state = run(POLICY, state, ResyncOk(table, 1) if ok else fail(table))
        (failing.discard if ok else failing.add)(table)
        for vserver in VSERVERS:
            scoped = {t for rule in POLICY.scoped["nfs"] if vserver in rule.vservers for t in rule.tables}
            expect_served = not (failing & (NFS_WIDE | scoped))
            assert (guard(state, "nfs", vserver) is None) == expect_served, (vserver, failing)
        assert (guard(state, "backup") is None) == ("volumes" not in failing)


# ------------------------------------------------------------------ documents

TOML = """
failures_to_fence = 2
backoff_max = 10

[consumers.nfs]
tables = ["vservers", "vldb", "export_rules", "lifs"]
quorum_grace = 2.5

[[consumers.nfs.scoped]]
vservers = ["vs_secure"]
tables = ["cifs_shares"]

[consumers.backup]
kind = "application"
tables = ["volumes", "vldb"]
"""


def test_a_toml_document_builds_the_policy_over_the_defaults() -> None:
    policy = from_document(tomllib.loads(TOML), known_tables=KNOWN, quorum_grace=4.0)
    assert policy.failures_to_fence == 2 and policy.backoff_max == 10 and policy.backoff_initial == 0.1
    assert policy.dependencies["nfs"] == {"vservers", "vldb", "export_rules", "lifs"}
    assert policy.scoped["nfs"] == (ScopedDependency(frozenset({"vs_secure"}), frozenset({"cifs_shares"})),)
    assert policy.kind("backup") == "application" and policy.kind("nfs") == "protocol"
    # Consumers the document does not name keep their defaults.
    assert policy.dependencies["cifs"] == default_policy().dependencies["cifs"]
    assert policy.grace("nfs") == 2.5 and policy.grace("cifs") == 4.0 and policy.grace("backup") == 4.0


def test_the_document_round_trips() -> None:
    policy = from_document(tomllib.loads(TOML), known_tables=KNOWN)
    doc = json.loads(json.dumps(policy_to_document(policy)))
    assert from_document(doc, known_tables=KNOWN) == policy


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"failures_to_fence": 0}, "failures_to_fence"),
        ({"backoff_initial": 5, "backoff_max": 1}, "backoff_max must not be smaller"),
        ({"bogus": 1}, "bogus"),
        ({"consumers": {"nfs": {"tables": ["nope"]}}}, "unknown table(s) ['nope']"),
        ({"consumers": {"nfs": {"tables": []}}}, "needs 'tables' or 'scoped'"),
        ({"consumers": {"nfs": {"kind": "application", "tables": ["lifs"]}}}, "nfs is a protocol"),
        ({"consumers": {"Bad Name": {"tables": ["lifs"]}}}, "lowercase"),
        ({"consumers": {"x": {"tables": ["lifs"], "quorum_grace": -1}}}, "consumers.x.quorum_grace"),
        ({"consumers": {"x": {"scoped": [{"vservers": [], "tables": ["lifs"]}]}}}, "vservers"),
        ({"consumers": {"x": {"tables": "lifs"}}}, "consumers.x.tables"),
    ],
)
def test_bad_documents_are_refused_with_a_message_naming_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as err:
        from_document(doc, known_tables=KNOWN)
    assert message in str(err.value)


def test_a_consumer_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(PolicyError, match="lowercase"):
        from_document({"consumers": {"backup\n": {"tables": ["volumes"]}}}, known_tables=KNOWN)


def test_a_grace_below_the_minimum_is_refused() -> None:
    with pytest.raises(PolicyError, match="quorum_grace"):
        from_document({"consumers": {"x": {"tables": ["lifs"], "quorum_grace": 0.1}}}, known_tables=KNOWN)
