"""``scripts/run`` as a subprocess on picked ports, its output read line by line with the
time each line arrived (for the launcher and README tests)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.integration.cluster import REPO, http, wait_for


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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
