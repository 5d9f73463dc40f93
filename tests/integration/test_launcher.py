"""scripts/run as a user runs it: the supervising launcher survives a node failure."""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from tests.integration.cluster import REPO, http, wait_for

pytestmark = pytest.mark.integration

FAILOVER_BOUND = 3.0  # DESIGN.md: leader kill -> writes succeed again
FIRST_BACKOFF = 1.0


@dataclass
class Run:
    proc: subprocess.Popen[str]
    lines: queue.Queue[tuple[float, str]]
    seen: list[tuple[float, str]] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)
    shared: str = ""

    def expect(self, pattern: str, timeout: float) -> tuple[float, re.Match[str]]:
        """The first output line (from now on, or already read) matching ``pattern``."""
        rx = re.compile(pattern)
        for when, line in self.seen:
            if m := rx.search(line):
                return when, m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                when, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self._note(when, line)
            if m := rx.search(line):
                return when, m
        print(self.output())  # pytest shortens long assertion messages
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s")

    def _note(self, when: float, line: str) -> None:
        self.seen.append((when, line))
        if m := re.search(r"node (n\d) (?:re)?started \(pid (\d+)\)(?:: (\S+))?", line):
            self.pids.add(int(m.group(2)))
            if m.group(3):
                self.urls[m.group(1)] = m.group(3)

    def drain(self) -> None:
        while True:
            try:
                self._note(*self.lines.get_nowait())
            except queue.Empty:
                return

    def output(self) -> str:
        self.drain()
        return "\n".join(line for _, line in self.seen)


@contextmanager
def scripts_run(tmp_path: str, *extra: str) -> Iterator[Run]:
    """``scripts/run`` on picked ports in ``tmp_path``; always stopped (SIGKILL at worst)."""
    proc = subprocess.Popen(
        [
            os.path.join(REPO, "scripts", "run"),
            "--data-dir",
            os.path.join(tmp_path, "data"),
            "--http-port",
            "0",
            "--raft-port",
            "0",
            "--cluster-address",
            "127.0.0.1:0",
            *extra,
        ],
        cwd=REPO,
        env=dict(os.environ, RDBSYNC_REQUEST_TIMEOUT="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[tuple[float, str]] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((time.monotonic(), line.rstrip("\n")))

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    run = Run(proc, lines)
    try:
        _, m = run.expect(r"cluster address \(any live node\): (\S+)", 60)
        run.shared = m.group(1)
        run.expect(r"node n3 started", 30)
        for url in run.urls.values():
            wait_for(lambda url=url: http("GET", url + "/readyz", timeout=2).status == 200, 60, f"{url} ready")
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in run.pids:  # never leave nodes behind, whatever the test found
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pumper.join(10)
        assert proc.stdout is not None
        proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


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
        assert new_pid != pid and _alive(new_pid)
        url = run.urls[leader]
        wait_for(lambda: http("GET", url + "/readyz", timeout=2).status == 200, 30, f"{leader} ready again")
        assert http("GET", url + "/v1/kv/after-kill").status == 200
        run.expect(rf"node {leader} up", 15)  # the change lines: down, then up again

        # SIGTERM stops every node: no orphans
        pids = set(run.pids)
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(30) == 0
        run.expect(r"all nodes stopped", 5)
        assert not [p for p in pids if _alive(p)], run.output()


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
        wait_for(lambda: not [p for p in pids if _alive(p)], 10, "every node gone after the launcher was killed")
