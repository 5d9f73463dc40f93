"""The chaos fault schedule is a pure function of the seed."""

from __future__ import annotations

import itertools

from chaos._faults import NET_FAULTS, schedule


def test_same_seed_same_schedule_and_different_seeds_differ() -> None:
    assert schedule(5, 300, network=True) == schedule(5, 300, network=True)
    assert schedule(5, 300, network=True) != schedule(6, 300, network=True)


def test_schedule_is_bounded_and_ordered() -> None:
    plan = schedule(9, 120, network=True)
    assert plan and all(f.start + f.duration <= 119 for f in plan)
    assert all(a.start + a.duration < b.start for a, b in itertools.pairwise(plan))


def test_without_namespaces_no_network_fault_is_planned() -> None:
    kinds = {f.kind for seed in range(20) for f in schedule(seed, 300, network=False)}
    assert kinds and not kinds & set(NET_FAULTS)


def test_a_retry_answered_not_applied_leaves_an_earlier_unknown_attempt_unknown() -> None:
    from chaos._workload import combine_attempts

    assert combine_attempts(["ok"]) == "ok"
    assert combine_attempts(["unknown", "ok"]) == "ok"
    assert combine_attempts(["fail"]) == "fail"
    assert combine_attempts(["unknown", "fail"]) == "unknown"
    assert combine_attempts(["unknown", "unknown", "unknown"]) == "unknown"
