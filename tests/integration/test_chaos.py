"""Short seeded chaos runs, end to end through ``python -m chaos``: they must find no
violation and nothing inconclusive, and inject the storage and membership faults of
issue 8 (whole-cluster kill, full disk, corrupt files on restart, a crash inside a
compaction, membership changes on five nodes under kills and partitions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from chaos._faults import failpoints_available
from tests.integration.cluster import REPO

pytestmark = pytest.mark.integration


def run_chaos(tmp_path: Any, *args: str, timeout: float, app: str = "apps.ontap:app") -> dict[str, Any]:
    report = tmp_path / "report"
    argv = [sys.executable, "-m", "chaos", "--app", app, *args, "--report", str(report)]
    argv += ["--workdir", str(tmp_path / "work"), "--check-time-limit", "30"]
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # Say where the run stood, and what each node logged last, before failing.
        print(_text(exc.output)[-6000:], _text(exc.stderr)[-4000:])
        for log in sorted((tmp_path / "work").glob("*/cluster/*.log")):
            print(f"--- {log.name} (last lines)", *log.read_text(errors="replace").splitlines()[-15:], sep="\n")
        raise
    print(proc.stdout[-6000:], proc.stderr[-4000:])
    summary: dict[str, Any] = json.loads((report / "report.json").read_text())
    assert os.path.getsize(report / "report.html") > 1000
    assert summary["faults"]["executed"], "the schedule ran no fault"
    statuses = {c["name"]: c["status"] for c in summary["checkers"]}
    assert statuses and set(statuses.values()) == {"pass"}, summary["checkers"]
    assert "fault_outcomes" in statuses
    assert summary["app"] == app
    dataplane = next(c for c in summary["checkers"] if c["name"] == "dataplane")
    assert dataplane["stats"]["checked"] > 100  # the app's answers were judged, not skipped
    assert proc.returncode == 0
    return summary


@pytest.mark.parametrize(
    ("app", "duration", "agents"), [("apps.ontap:app", "45", False), ("apps.proxy:app", "30", True)]
)
def test_short_seeded_chaos_run_passes(tmp_path: Any, app: str, duration: str, agents: bool) -> None:
    # The proxy run also runs a data-plane daemon (rdbsync.agent) beside every node,
    # through the same faults, and judges what each serves.
    summary = run_chaos(
        tmp_path, "--seed", "7", "--duration", duration, *(["--agents"] if agents else []), timeout=170, app=app
    )
    judged = next((c for c in summary["checkers"] if c["name"] == "agents"), None)
    if agents:
        assert judged is not None and judged["stats"]["checked"] > 100, judged
        assert judged["stats"].get("outcome_fail", 0) > 0, "no fault ever stopped a daemon from serving"
    else:
        assert judged is None


def test_agents_through_node_kill_pause_partition_and_a_failed_table(tmp_path: Any) -> None:
    """Issue 11: a real agent process beside every node, through a kill and restart of
    its node, a pause, a partition of its node (the daemon in the node's namespace, cut
    off with it) and a failed resync of its table: what it serves is always its node's
    projection at its revision, never while that table has failed, and it converges."""
    mix = "kill_restart,pause,partition_one,resync_error"
    summary = run_chaos(
        tmp_path, "--seed", "11", "--duration", "30", "--faults", mix, "--agents", timeout=170, app="apps.proxy:app"
    )
    for kind in set(mix.split(",")) - set(summary["faults"]["unavailable"]):
        assert injected(summary, kind) >= 1, (kind, summary["faults"]["kinds"])
    judged = next(c for c in summary["checkers"] if c["name"] == "agents")
    assert judged["stats"]["checked"] > 100 and judged["stats"]["outcome_fail"] > 0, judged["stats"]
    assert judged["stats"]["fault_windows"] >= 1, "the seed's resync fault must hit the agent's table"


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def injected(summary: dict[str, Any], kind: str) -> int:
    return int(summary["faults"]["kinds"].get(kind, {}).get("injected", 0))


@pytest.mark.skipif(
    not failpoints_available(), reason="needs rdb's failpoints, fail-stop and refusal of bad files (issue 8, 1-4)"
)
def test_short_seeded_chaos_run_with_storage_faults_passes(tmp_path: Any) -> None:
    # In turn: a damaged file on restart, a full disk, the whole cluster killed, a crash
    # inside a compaction, then the classic faults; compactions every 100 entries.
    mix = "corrupt_restart,disk_full,kill_all,compaction_crash,kill_leader,partition_one,resync_error,pause_leader"
    summary = run_chaos(
        tmp_path, "--seed", "7", "--duration", "50", "--faults", mix, "--compaction-entries", "100", timeout=300
    )
    expected = {"corrupt_restart", "disk_full", "kill_all", "compaction_crash"} - set(summary["faults"]["unavailable"])
    assert {"corrupt_restart", "kill_all"} <= expected
    for kind in expected:
        assert injected(summary, kind) >= 1, (kind, summary["faults"]["kinds"])
    assert summary["storage"]["snapshot_writes"]["inside_kill_windows"] >= 1, summary["storage"]


def test_five_node_chaos_run_with_membership_changes_passes(tmp_path: Any) -> None:
    mix = "member_cycle,partition_one,member_cycle,kill_leader"
    summary = run_chaos(
        tmp_path, "--seed", "5", "--nodes", "5", "--duration", "45", "--faults", mix, "--no-disk", timeout=300
    )
    assert injected(summary, "member_cycle") >= 2, summary["faults"]["kinds"]
    outcome = next(c for c in summary["checkers"] if c["name"] == "fault_outcomes")
    assert outcome["stats"]["by_kind"]["member_cycle"]["judged"] >= 2


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
def test_the_small_disk_fills_up_and_never_shows_on_the_host(tmp_path: Any) -> None:
    script = f"""
import errno, os, sys
from chaos._disk import SmallDisk, enter_mount_namespace
enter_mount_namespace()
disk = SmallDisk({str(tmp_path / "disk")!r}, 4)
disk.setup()
print(open("/proc/self/mounts").read().count({str(tmp_path / "disk")!r}), flush=True)
print(disk.fill() > 3 << 20, flush=True)
try:
    with open(os.path.join(disk.data_dir, "x"), "wb") as f:
        f.write(b"y" * 65536)
    print("written")
except OSError as exc:
    print(errno.errorcode[exc.errno])
disk.free()
with open(os.path.join(disk.data_dir, "x"), "wb") as f:
    f.write(b"y" * 65536)
print("written after free")
sys.stdin.readline()  # hold the namespace while the parent looks at its own mounts
disk.teardown()
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    lines = [proc.stdout.readline().strip() for _ in range(4)]
    with open("/proc/self/mounts") as f:
        host_mounts = f.read()
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(30) == 0
    proc.stdout.close()
    assert lines == ["1", "True", "ENOSPC", "written after free"], lines
    assert str(tmp_path / "disk") not in host_mounts


_LAB = """
import sys
from chaos._net import NetLab
lab = NetLab(["n1", "n2"])
sys.stdin.readline()  # go
try:
    lab.setup()
    print(lab.subnet_prefix, flush=True)
    sys.stdin.readline()  # done
finally:
    lab.teardown()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_chaos_runs_started_at_once_get_subnets_of_their_own() -> None:
    """Two runs that looked for a free /24 at the same instant took the same one and
    sent requests to each other's nodes (the set checker saw the other run's writes)."""
    labs = [
        subprocess.Popen(
            [sys.executable, "-c", _LAB], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    try:
        for lab in labs:
            assert lab.stdin is not None
            lab.stdin.write("go\n")
            lab.stdin.flush()
        prefixes = []
        for lab in labs:
            assert lab.stdout is not None
            prefixes.append(lab.stdout.readline().strip())
        assert all(prefixes), prefixes
        assert len(set(prefixes)) == len(prefixes), prefixes
    finally:
        for lab in labs:
            if lab.stdin is not None:
                lab.stdin.close()
            lab.wait(timeout=60)
            if lab.stdout is not None:
                lab.stdout.close()
