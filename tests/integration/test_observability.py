"""What an operator sees of a running cluster: /metrics (checked by promtool) and the logs."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.debian import ensure_tool
from tests.integration.cluster import REPO, Cluster, free_ports, http, running_cluster, wait_for
from tests.metrics import samples, total, value

pytestmark = pytest.mark.integration

FENCE_EVENTS = {"fenced", "unfenced", "fence_changed"}


def metrics(c: Cluster, nid: str) -> str:
    resp = http("GET", c.url(nid) + "/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text: str = resp.body
    return text


def log_lines(c: Cluster, nid: str) -> list[dict[str, Any]]:
    """Every line of a node's log, parsed: each must be one JSON object with an event."""
    out = []
    with open(os.path.join(c.base_dir, f"{nid}.log")) as f:
        for line in f:
            doc = json.loads(line)
            assert isinstance(doc, dict) and isinstance(doc.get("event"), str), line
            out.append(doc)
    return out


def test_promtool_check_metrics_finds_nothing_on_a_real_node(tmp_path: Any) -> None:
    promtool = ensure_tool("promtool", ["prometheus"])
    with running_cluster(str(tmp_path), 3, extra_args=["--fault-injection"]) as c:
        url = c.url("n1")
        # Traffic so that every family has samples: writes, reads, a 404, a table row,
        # a manual resync, a fence and its lifting.
        for i in range(5):
            assert http("PUT", f"{url}/v1/kv/k{i}", {"value": i}).status == 200
        assert http("GET", f"{url}/v1/kv/k1").status == 200
        assert http("GET", f"{url}/v1/kv/missing").status == 404
        assert http("GET", f"{url}/no/such/route").status == 404
        assert http("PUT", f"{url}/v1/tables/vservers/vs1", {"name": "vs1"}).status == 200
        assert http("POST", f"{url}/v1/resync").status == 200
        assert http("POST", f"{url}/v1/debug/faults", {"table": "export_rules", "mode": "error"}).status == 200
        wait_for(lambda: value(metrics(c, "n1"), "rdb_protocol_fenced", protocol="nfs", kind="protocol") == 1, 5, "nfs")
        assert http("DELETE", f"{url}/v1/debug/faults").status == 200
        for nid in c.nodes:
            text = metrics(c, nid)
            result = subprocess.run(
                [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
            )
            report = (result.stdout + result.stderr).decode()
            print(f"promtool check metrics on {nid}: exit {result.returncode}, output {report.strip() or '(none)'}")
            assert result.returncode == 0 and report.strip() == "", report
            families = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
            typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
            assert families == typed and len(families) >= 30
            # Every family the node had before keeps its name.
            for old in (
                "rdb_revision",
                "rdb_raft_term",
                "rdb_raft_commit_index",
                "rdb_raft_applied_index",
                "rdb_raft_is_leader",
                "rdb_quorum",
                "rdb_journal_syncs_total",
                "rdb_truncations_below_commit_total",
                "rdb_read_barriers_total",
                "rdb_blade_applied_revision",
                "rdb_blade_lag_revisions",
                "rdb_blade_drift_total",
                "rdb_blade_in_sync",
                "rdb_resync_runs_total",
                "rdb_protocol_fenced",
                "rdb_fence_events_total",
                "http_responses_total",
            ):
                assert old in families, old


def test_histograms_move_with_requests_and_commits(tmp_path: Any) -> None:
    with running_cluster(str(tmp_path), 3) as c:
        before = {nid: metrics(c, nid) for nid in c.nodes}
        writes = 12
        for i in range(writes):
            assert http("PUT", f"{c.url('n2')}/v1/kv/obs/{i}", {"value": i}).status == 200
        assert http("GET", f"{c.url('n3')}/v1/kv/obs/1").status == 200  # linearizable: a read barrier

        def grew(nid: str, name: str, by: float, **labels: str) -> bool:
            return total(metrics(c, nid), name, **labels) - total(before[nid], name, **labels) >= by

        put = {"method": "PUT", "route": "/v1/kv/{key}", "code": "200"}
        after = metrics(c, "n2")
        assert (
            total(after, "rdb_http_request_duration_seconds_count", **put)
            - total(before["n2"], "rdb_http_request_duration_seconds_count", **put)
            == writes
        )
        assert total(after, "rdb_http_request_duration_seconds_bucket", le="+Inf", **put) >= writes
        # The route template, never the raw path (bounded label values).
        routes = {dict(labels).get("route") for (_, labels) in samples(after)}
        assert not any(r and r.startswith("/v1/kv/obs") for r in routes)
        assert grew("n2", "rdb_commit_duration_seconds_count", writes)
        assert total(after, "rdb_commit_duration_seconds_sum") > total(before["n2"], "rdb_commit_duration_seconds_sum")
        assert grew("n3", "rdb_read_barrier_duration_seconds_count", 1)
        assert grew("n3", "rdb_http_request_duration_seconds_count", 1, method="GET", route="/v1/kv/{key}", code="200")
        for nid in c.nodes:
            assert grew(nid, "rdb_fsync_duration_seconds_count", 1), nid  # every node persists the entries
            wait_for(lambda nid=nid: grew(nid, "rdb_commit_to_blade_applied_seconds_count", writes), 5, f"{nid} blade")
            # One incremental run may cover several commits: at least one ran.
            assert grew(nid, "rdb_resync_run_duration_seconds_count", 1, table="volumes", kind="incremental")
        assert not grew("n1", "rdb_resync_run_duration_seconds_count", 1, table="vldb", kind="manual")
        assert http("POST", f"{c.url('n1')}/v1/resync?table=vldb").status == 200
        assert grew("n1", "rdb_resync_run_duration_seconds_count", 1, table="vldb", kind="manual")
        # prometheus_client's process and Python collectors.
        assert value(after, "process_cpu_seconds_total") is not None
        assert value(after, "process_resident_memory_bytes")
        assert total(after, "python_info") == 1 and total(after, "python_gc_collections_total") >= 0


def test_fresh_start_logs_one_ready_line_per_node_and_fences_as_json_events(tmp_path: Any) -> None:
    with running_cluster(str(tmp_path), 3, extra_args=["--fault-injection"]) as c:
        for nid in c.nodes:
            lines = wait_for(
                lambda nid=nid: (ls := log_lines(c, nid)) and any(d["event"] == "node_ready" for d in ls) and ls,
                10,
                f"{nid} node_ready line",
            )
            # Start-up is one line: no fence lines (the initial fence state is not a change).
            # The election is news of its own: one line per Raft role change, with the term.
            roles = [d for d in lines if d["event"] == "raft_role"]
            assert all(d["role"] in ("follower", "candidate", "leader") and d["term"] >= 1 for d in roles), roles
            ours = [d for d in lines if not d["logger"].startswith("pysyncobj") and d["event"] != "raft_role"]
            assert [d["event"] for d in ours] == ["node_ready"], lines
            ready = ours[0]
            assert ready["node"] == nid and ready["http"] == c.url(nid) and ready["raft"] == c.nodes[nid].raft
            assert ready["level"] == "info" and ready["startup_seconds"] > 0
        # After start-up a fence is news: one JSON line whose fields are keys, no repr in a message.
        assert http("POST", f"{c.url('n2')}/v1/debug/faults", {"table": "export_rules", "mode": "error"}).status == 200

        def fence_line() -> dict[str, Any] | None:
            return next((d for d in log_lines(c, "n2") if d["event"] == "fenced" and d["protocol"] == "nfs"), None)

        fenced = wait_for(fence_line, 10, "an nfs fenced line on n2")
        assert fenced["level"] == "warning" and fenced["table"] == "export_rules" and fenced["cause"] == "error"
        assert isinstance(fenced["since"], float) and "msg" not in fenced
        failed = next(d for d in log_lines(c, "n2") if d["event"] == "resync_failed")
        assert failed["table"] == "export_rules" and failed["cause"] == "error"
        assert http("DELETE", f"{c.url('n2')}/v1/debug/faults").status == 200
        unfenced = wait_for(
            lambda: next((d for d in log_lines(c, "n2") if d["event"] == "unfenced" and d["protocol"] == "nfs"), None),
            10,
            "an nfs unfenced line on n2",
        )
        assert unfenced["was_table"] == "export_rules" and unfenced["was_cause"] == "error"
        for line in log_lines(c, "n2"):
            assert "{'" not in json.dumps(line), line  # no Python dict repr anywhere
        for nid in ("n1", "n3"):
            assert not any(d["event"] in FENCE_EVENTS for d in log_lines(c, nid))


def test_a_node_on_a_terminal_logs_readable_text(tmp_path: Any) -> None:
    """``rdbsync node --log-format auto`` (the default) with stderr on a terminal."""
    raft, port = free_ports(2)
    secret = tmp_path / "secret"
    secret.write_text("s3cret-s3cret-s3cret\n")
    secret.chmod(0o600)
    argv = [sys.executable, "-m", "node", "node", "--id", "n1", "--raft", f"127.0.0.1:{raft}"]
    argv += ["--http", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "n1"), "--secret-file", str(secret)]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    text = b""
    try:
        deadline = time.monotonic() + 30
        while b"node_ready" not in text and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    text += os.read(master, 65536)
                except OSError:  # the node exited: its terminal closed
                    break
    finally:
        proc.terminate()
        proc.wait(15)
        os.close(master)
    lines = text.decode(errors="replace").splitlines()
    ready = [line for line in lines if "node_ready" in line]
    assert len(ready) == 1, lines
    pattern = r"^\d\d:\d\d:\d\d\.\d{3} n1 INFO +node_ready http=http://127\.0\.0\.1:\d+ raft=127"
    assert re.match(pattern, ready[0]), ready
    assert not ready[0].lstrip().startswith("{")
