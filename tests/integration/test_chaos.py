"""A short seeded chaos run, end to end: it must find no violation and nothing inconclusive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.cluster import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("app", "duration"), [("apps.ontap:app", "45"), ("apps.proxy:app", "30")])
def test_short_seeded_chaos_run_passes(tmp_path: Any, app: str, duration: str) -> None:
    report = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos",
            "--app",
            app,
            "--seed",
            "7",
            "--duration",
            duration,
            "--report",
            str(report),
            "--workdir",
            str(tmp_path / "work"),
            "--check-time-limit",
            "30",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    summary = json.loads((report / "report.json").read_text())
    assert os.path.getsize(report / "report.html") > 1000
    assert summary["faults"]["executed"], "the schedule ran no fault"
    statuses = {c["name"]: c["status"] for c in summary["checkers"]}
    assert statuses and set(statuses.values()) == {"pass"}, summary["checkers"]
    assert summary["app"] == app
    dataplane = next(c for c in summary["checkers"] if c["name"] == "dataplane")
    assert dataplane["stats"]["checked"] > 100  # the app's answers were judged, not skipped
    assert proc.returncode == 0
