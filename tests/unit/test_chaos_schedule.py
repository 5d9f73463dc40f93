"""The chaos fault schedule is a pure function of the seed."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

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


def test_a_chosen_mix_is_injected_in_turn_so_a_short_run_has_every_kind() -> None:
    from chaos._faults import STORAGE_FAULTS

    mix = [*STORAGE_FAULTS, "kill_leader", "member_cycle"]
    plan = schedule(7, 60, network=True, kinds=mix, round_robin=True)
    assert {f.kind for f in plan} == set(mix)
    assert plan == schedule(7, 60, network=True, kinds=mix, round_robin=True)


def test_new_kinds_only_where_the_run_can_do_them() -> None:
    from chaos._faults import available_kinds

    assert "disk_full" not in available_kinds(network=True, disk=False)
    assert "compaction_crash" not in available_kinds(network=True, failpoints=False)
    assert "member_cycle" not in available_kinds(network=True, nodes=3)
    full = available_kinds(network=True, disk=True, failpoints=True, nodes=5)
    assert {"kill_all", "disk_full", "corrupt_restart", "compaction_crash", "member_cycle"} <= set(full)


def test_some_seeds_compact_every_few_hundred_entries() -> None:
    from chaos._faults import compaction_entries

    chosen = [compaction_entries(seed) for seed in range(30)]
    assert None in chosen
    assert any(c is not None and c <= 400 for c in chosen)
    assert chosen == [compaction_entries(seed) for seed in range(30)]


def test_corruption_cuts_the_snapshot_or_flips_a_journal_byte(tmp_path: Any) -> None:
    from chaos._faults import _corrupt

    node = SimpleNamespace(data_dir=str(tmp_path))
    assert _corrupt(node, 0)["file"] is None  # nothing yet: not injected
    journal = tmp_path / "raft.journal"
    journal.write_bytes(bytes(range(256)) * 64)
    snapshot = tmp_path / "raft.snapshot"
    snapshot.write_bytes(b"s" * 1000)
    assert _corrupt(node, 0)["file"] == "raft.snapshot" and snapshot.stat().st_size == 500
    before = journal.read_bytes()
    assert _corrupt(node, 1)["file"] == "raft.journal"
    after = journal.read_bytes()
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff == [len(before) // 3]


def test_the_kind_table_counts_planned_executed_and_injected() -> None:
    from chaos._faults import FaultRecord, PlannedFault
    from chaos._runner import _kind_table

    plan = [PlannedFault("disk_full", 1, 2, 0, 0), PlannedFault("kill_all", 4, 2, 0, 0)]
    records = [FaultRecord("disk_full", 1, 3, ["n1"], {"injected": False}), FaultRecord("kill_all", 4, 6, ["n1"])]
    table = _kind_table(["disk_full", "kill_all", "member_cycle"], plan, records)
    assert table == {
        "disk_full": {"planned": 1, "executed": 1, "injected": 0},
        "kill_all": {"planned": 1, "executed": 1, "injected": 1},
        "member_cycle": {"planned": 0, "executed": 0, "injected": 0},
    }
