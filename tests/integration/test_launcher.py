"""scripts/run as a user runs it: the supervising launcher survives a node failure."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time

import pytest

from tests.integration.cluster import http, wait_for
from tests.integration.launch import Run, alive, scripts_run

pytestmark = pytest.mark.integration

FAILOVER_BOUND = 3.0  # the failover bound: leader kill -> writes succeed again
FIRST_BACKOFF = 1.0


def _leader(run: Run) -> tuple[str, int]:
    def agreed() -> tuple[str, int] | None:
        st = http("GET", run.urls["n1"] + "/v1/cluster", timeout=3).body
        leaders = [n for n in st["nodes"] if n.get("role") == "leader" and n.get("quorum")]
        return (leaders[0]["id"], int(leaders[0]["pid"])) if len(leaders) == 1 else None

    return wait_for(agreed, 20, "a leader")


def _put_until_ok(url: str, within: float) -> float:
    """PUT through ``url`` with one Idempotency-Key until a 200; when it succeeded."""
    key = secrets.token_hex(8)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            reply = http("PUT", f"{url}/v1/kv/after-kill", {"value": key}, headers={"Idempotency-Key": key}, timeout=2)
            if reply.status == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no write through {url} succeeded within {within}s")


def test_kill_9_of_the_leader_under_scripts_run(tmp_path) -> None:
    with scripts_run(str(tmp_path)) as run:
        leader, pid = _leader(run)
        assert http("PUT", run.shared + "/v1/kv/before", {"value": 1}).status == 200
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        # writes through the shared address come back within the failover bound
        ok_at = _put_until_ok(run.shared, within=15)
        assert ok_at - killed_at <= FAILOVER_BOUND, f"writes failed for {ok_at - killed_at:.2f}s after the kill"

        # the launcher reports it and restarts it after the first backoff, and it serves again
        run.expect(rf"node {leader} was killed by SIGKILL; restarting in 1s", 5)
        restarted_at, m = run.expect(rf"node {leader} restarted \(pid (\d+)\)", 10)
        assert restarted_at - killed_at <= FIRST_BACKOFF + 1.0
        new_pid = int(m.group(1))
        assert new_pid != pid and alive(new_pid)
        url = run.urls[leader]
        wait_for(lambda: http("GET", url + "/readyz", timeout=2).status == 200, 30, f"{leader} ready again")
        assert http("GET", url + "/v1/kv/after-kill").status == 200
        run.expect(rf"node {leader} up", 15)  # the change lines: down, then up again

        # SIGTERM stops every node: no orphans
        pids = set(run.pids)
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(30) == 0
        run.expect(r"all nodes stopped", 5)
        assert not [p for p in pids if alive(p)], run.output()


def test_no_restart_keeps_a_dead_node_down_and_a_killed_launcher_leaves_no_orphans(tmp_path) -> None:
    with scripts_run(str(tmp_path), "--no-restart") as run:
        leader, _ = _leader(run)
        victim = next(n for n in sorted(run.urls) if n != leader)
        pid = int(http("GET", run.urls[victim] + "/v1/status").body["pid"])
        os.kill(pid, signal.SIGKILL)
        run.expect(rf"node {victim} was killed by SIGKILL; --no-restart: leaving it down", 5)
        # A restart would have come after the first backoff; for three times that, it stays down.
        deadline = time.monotonic() + 3 * FIRST_BACKOFF
        while time.monotonic() < deadline:
            with pytest.raises(OSError):
                http("GET", run.urls[victim] + "/healthz", timeout=1)
            time.sleep(0.2)
        assert not any("restarted" in line for _, line in run.seen), run.output()
        _put_until_ok(run.shared, within=10)  # the other two keep serving

        # Even a launcher killed with SIGKILL takes its nodes with it.
        pids = set(run.pids)
        run.proc.kill()
        run.proc.wait(10)
        wait_for(lambda: not [p for p in pids if alive(p)], 10, "every node gone after the launcher was killed")


def test_a_node_with_a_truncated_snapshot_is_reported_and_kept_down_until_its_data_is_removed(tmp_path) -> None:
    with scripts_run(str(tmp_path), "--node-arg=--compaction-entries=10") as run:
        leader, _ = _leader(run)
        victim = next(n for n in sorted(run.urls) if n != leader)
        for i in range(40):  # past the compaction threshold: every node writes a snapshot
            assert http("PUT", f"{run.shared}/v1/kv/k{i}", {"value": i}, timeout=5).status == 200
        data_dir = os.path.join(str(tmp_path), "data", victim)
        snapshot = os.path.join(data_dir, "raft.snapshot")
        wait_for(lambda: os.path.exists(snapshot) and os.path.getsize(snapshot) > 0, 30, f"{victim}'s snapshot")

        # damage the snapshot while the node cannot touch it, then kill it: the restart finds it
        pid = int(http("GET", run.urls[victim] + "/v1/status").body["pid"])
        os.kill(pid, signal.SIGSTOP)
        os.truncate(snapshot, os.path.getsize(snapshot) // 2)
        os.kill(pid, signal.SIGKILL)
        run.expect(rf"node {victim} was killed by SIGKILL; restarting in 1s", 10)
        run.expect(rf"node {victim} restarted", 10)
        _, m = run.expect(
            rf"node {victim} stopped: its data files are unusable \(exit 65\): (.*); not restarting: remove (\S+) and",
            60,
        )
        assert "raft.snapshot" in m.group(1), m.group(0)  # the node's own reason, quoted
        assert os.path.samefile(m.group(2), data_dir)

        # kept down (a restart would have come after the 2 s backoff) while the other two serve writes
        deadline = time.monotonic() + 4 * FIRST_BACKOFF
        while time.monotonic() < deadline:
            with pytest.raises(OSError):
                http("GET", run.urls[victim] + "/healthz", timeout=1)
            time.sleep(0.2)
        assert sum(f"node {victim} restarted" in line for _, line in run.seen) == 1, run.output()
        _put_until_ok(run.shared, within=10)

        # the remedy it names: remove the data directory; it is removed, rejoins as a
        # learner that copies the data, and is added back as a voter (never a wiped voter)
        shutil.rmtree(data_dir)
        run.expect(rf"node {victim}: its data directory is gone; rejoining it as a new member", 10)
        run.expect(rf"node {victim} started as a learner", 30)
        run.expect(rf"node {victim} rejoined the cluster as a voting member", 60)
        url = run.urls[victim]
        status = http("GET", url + "/v1/status", timeout=5).body
        assert status["role"] in ("leader", "follower"), status
        wait_for(lambda: http("GET", url + "/readyz", timeout=2).status == 200, 60, f"{victim} ready again")
        wait_for(lambda: http("GET", url + "/v1/kv/k39", timeout=2).status == 200, 30, f"{victim} has the data")
