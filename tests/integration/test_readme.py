"""The README's five-minute tour, command by command, as a user types it: against
``scripts/run`` (on picked ports: ``RDBSYNC_ENDPOINTS`` points the CLI at them), checking
what the tour says each step shows."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

from tests.integration.cluster import REPO, http, wait_for
from tests.integration.launch import scripts_run

pytestmark = pytest.mark.integration
README = pathlib.Path(REPO) / "README.md"


def tour_commands() -> list[str]:
    """The shell lines of the tour's ```sh blocks, comments stripped, in order."""
    text = README.read_text()
    section = text.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def test_the_readme_never_points_outside_the_repository() -> None:
    text = README.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text
    assert text.index("scripts/run ") < text.index("## A five-minute tour") < text.index("## The rdbsync command")


def test_the_five_minute_tour(tmp_path) -> None:
    commands = tour_commands()
    assert any(c.startswith("kill -9") for c in commands) and any("snapshot restore" in c for c in commands)
    with scripts_run(str(tmp_path)) as run:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDBSYNC_")}
        env["RDBSYNC_ENDPOINTS"] = ",".join([run.shared, *(run.urls[n] for n in sorted(run.urls))])
        env["PATH"] = os.path.join(REPO, ".venv", "bin") + os.pathsep + env["PATH"]
        outputs: dict[str, list[str]] = {}
        killed = ""
        for cmd in commands:
            if cmd.startswith("rdbsync snapshot save") and killed:
                # As the tour says: restore once the restarted node is back and fences
                # nothing. Before that, --wait applied reports it (fenced or unreachable)
                # instead of waiting, and its blades still hold what it had before the kill.
                back = run.urls[killed]
                wait_for(lambda b=back: http("GET", b + "/readyz", timeout=2).status == 200, 30, f"{killed} ready")
            if "<the leader's pid>" in cmd:
                st = http("GET", run.shared + "/v1/cluster").body
                leader = next(n for n in st["nodes"] if n.get("role") == "leader")
                killed = leader["id"]
                cmd = cmd.replace("<the leader's pid>", str(leader["pid"]))
            out = subprocess.run(
                ["bash", "-c", cmd], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60, check=False
            )
            assert out.returncode == 0, (cmd, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr
            outputs.setdefault(cmd.split("'")[0].strip(), []).append(out.stdout)

        puts = [o for k, v in outputs.items() if "--wait applied" in k or k.startswith("rdbsync tables put") for o in v]
        assert any("n1 applied, n2 applied, n3 applied" in o for o in puts)
        vols = outputs["rdbsync blades volumes"]
        assert len(vols) == 3  # after the writes, after the delete, after the restore
        assert _holders(vols[0], "vol1") == {"n2"}
        assert _holders(vols[1], "vol1") == set()
        assert _holders(vols[2], "vol1") == {"n2"}
        assert all(_holders(o, "vol1") == {"n1", "n2", "n3"} for o in outputs["rdbsync blades vldb"])

        # what the tour says scripts/run printed, in that order
        run.expect(rf"node {killed} was killed by SIGKILL; restarting in 1s", 5)
        run.expect(rf"node {killed} restarted", 10)
        run.expect(r"leader elected: n\d \(term \d+\)", 10)
        run.expect(rf"node {killed} up", 20)
        url = run.urls[killed]
        wait_for(lambda: http("GET", url + "/readyz", timeout=2).status == 200, 30, f"{killed} ready")
        events = subprocess.run(
            ["rdbsync", "events"], env=env, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert re.search(rf"{killed} (fenced|fence_changed) nfs table=\* cause=catching_up", events), events
        assert re.search(rf"{killed} unfenced nfs", events), events


def _holders(table_output: str, row: str) -> set[str]:
    """The nodes whose row of ``rdbsync blades`` lists ``row``."""
    return {m.group(1) for m in re.finditer(r"│ (n\d)\s+│[^\n]*", table_output) if row in m.group(0)}
