"""The real ``rdbsync`` command (the installed entry point) against real clusters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from tests.integration.cluster import REPO, Cluster, free_ports, running_cluster, wait_for

pytestmark = pytest.mark.integration

RDBSYNC = os.path.join(REPO, ".venv", "bin", "rdbsync")


def rdb(
    cluster: Cluster | None, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RDBSYNC_")}
    if cluster is not None:
        e["RDBSYNC_ENDPOINTS"] = ",".join(cluster.endpoints())
    e.update(env or {})
    out = subprocess.run([RDBSYNC, *args], env=e, capture_output=True, text=True, timeout=timeout, check=False)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def ok(cluster: Cluster | None, *args: str, **kw: object) -> str:
    out = rdb(cluster, *args, **kw)  # type: ignore[arg-type]
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def test_kv_commands_and_exit_codes(cluster: Cluster) -> None:
    assert "OK revision" in ok(cluster, "kv", "put", "vol1", '{"size": 10}')
    assert json.loads(ok(cluster, "kv", "get", "vol1")) == {"size": 10}
    entry = json.loads(ok(cluster, "-o", "json", "kv", "get", "vol1"))
    assert entry["value"] == {"size": 10} and entry["version"] == 1
    ok(cluster, "kv", "put", "vol2", "plain text")
    assert ok(cluster, "kv", "get", "vol2").strip() == "plain text"
    listing = json.loads(ok(cluster, "-o", "json", "kv", "ls", "vol"))
    assert [kv["key"] for kv in listing["kvs"]] == ["vol1", "vol2"]
    assert "vol2" in ok(cluster, "kv", "ls", "vol")  # the table form

    txn = {
        "compare": [{"key": "vol1", "target": "version", "value": 1}],
        "success": [{"op": "put", "key": "vol3", "value": 3}],
    }
    assert "SUCCEEDED" in ok(cluster, "kv", "txn", json.dumps(txn))
    assert "FAILED" in ok(cluster, "kv", "txn", json.dumps(txn).replace('"value": 1', '"value": 7'))

    missing = rdb(cluster, "kv", "get", "nope")
    assert missing.returncode == 1 and "rdbsync: error: not_found: key 'nope' does not exist" in missing.stderr
    conflict = rdb(cluster, "kv", "put", "vol1", "2", "--prev-revision", "1")
    assert conflict.returncode == 3 and "cas_conflict" in conflict.stderr and "applied: false" in conflict.stderr
    assert rdb(cluster, "kv", "put", "only-a-key").returncode == 2
    assert rdb(cluster, "kv", "txn", "{not json").returncode == 2
    assert rdb(cluster, "-o", "yaml", "kv", "get", "vol1").returncode == 2
    invalid = rdb(cluster, "tables", "put", "volumes", "v1", '{"name": "v1"}')
    assert invalid.returncode == 5 and "rdbsync: error: schema:" in invalid.stderr
    assert "OK revision" in ok(cluster, "kv", "del", "vol2")
    assert rdb(cluster, "kv", "del", "vol2").returncode == 1

    dead = ",".join(f"http://127.0.0.1:{p}" for p in free_ports(2))
    down = rdb(None, "--timeout", "1", "kv", "get", "vol1", env={"RDBSYNC_ENDPOINTS": dead})
    assert down.returncode == 4 and "rdbsync: error: unreachable" in down.stderr
    # failover: dead endpoints first, then the cluster
    live = ",".join([dead, *cluster.endpoints()])
    assert json.loads(ok(None, "--endpoints", live, "kv", "get", "vol1")) == {"size": 10}


def test_tables_status_members_resync_fences_events(cluster: Cluster) -> None:
    assert "vservers" in ok(cluster, "tables", "ls")
    schema = json.loads(ok(cluster, "tables", "schema", "vservers"))
    assert "properties" in schema
    assert rdb(cluster, "tables", "schema", "nope").returncode == 1
    out = ok(cluster, "tables", "put", "vservers", "vs1", '{"name": "vs1", "protocols": ["nfs"]}', "--wait", "applied")
    assert "n1 applied, n2 applied, n3 applied" in out
    row = json.loads(ok(cluster, "tables", "get", "vservers", "vs1"))
    assert row["name"] == "vs1"
    assert "vs1" in json.loads(ok(cluster, "-o", "json", "tables", "get", "vservers"))["rows"]

    ring = ok(cluster, "status")
    for nid in cluster.nodes:
        assert nid in ring
    assert "leader" in ring and "in_sync 0" in ring
    data = json.loads(ok(cluster, "-o", "json", "status"))
    assert {n["id"] for n in data["nodes"]} == set(cluster.nodes)
    assert all(n["tables"]["vservers"]["state"] == "in_sync" for n in data["nodes"])

    members = json.loads(ok(cluster, "-o", "json", "members", "ls"))
    assert {m["id"] for m in members["members"]} == set(cluster.nodes)
    assert rdb(cluster, "members", "rm", "n9").returncode == 1

    plan = json.loads(ok(cluster, "-o", "json", "resync", "--table", "vservers", "--dry-run", "--node", "n2"))
    assert plan["dry_run"] and [r["table"] for r in plan["results"]] == ["vservers"]
    assert rdb(cluster, "resync", "--table", "nope").returncode == 1

    assert "no fences" in ok(cluster, "fences")
    assert json.loads(ok(cluster, "-o", "json", "fences")) == []
    events = json.loads(ok(cluster, "-o", "json", "events"))
    assert {e["node"] for e in events} <= set(cluster.nodes)
    assert rdb(cluster, "events", "--follow", "--duration", "1", "--poll", "0.2").returncode == 0


def test_snapshot_save_and_restore(cluster: Cluster, tmp_path) -> None:
    ok(cluster, "kv", "put", "keep", "1")
    path = str(tmp_path / "backup.snap")
    assert "saved" in ok(cluster, "snapshot", "save", path)
    ok(cluster, "kv", "put", "keep", "2")
    ok(cluster, "kv", "put", "later", "x")
    assert "restored" in ok(cluster, "snapshot", "restore", path)
    assert ok(cluster, "kv", "get", "keep").strip() == "1"
    assert rdb(cluster, "kv", "get", "later").returncode == 1
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not a snapshot")
    refused = rdb(cluster, "snapshot", "restore", str(bad))
    assert refused.returncode == 5 and "malformed snapshot" in refused.stderr


def test_kv_watch_prints_each_change(cluster: Cluster) -> None:
    first = json.loads(ok(cluster, "-o", "json", "kv", "put", "w/a", "1"))["revision"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDBSYNC_")}
    env["RDBSYNC_ENDPOINTS"] = ",".join(cluster.endpoints())
    watch = subprocess.Popen(
        [RDBSYNC, "kv", "watch", "w/", "--from-revision", str(first), "--count", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ok(cluster, "kv", "put", "w/b", '{"n": 2}')
        ok(cluster, "kv", "del", "w/a")
        stdout, stderr = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == f"put w/a revision={first} 1"
    assert lines[1].startswith("put w/b revision=") and lines[1].endswith('{"n":2}')
    assert lines[2].startswith("delete w/a revision=")


def test_token_and_completion(tmp_path) -> None:
    with running_cluster(str(tmp_path), 1, env={"RDBSYNC_API_TOKEN": "s3cret"}) as c:
        denied = rdb(c, "kv", "get", "x")
        assert denied.returncode == 5 and "unauthorized" in denied.stderr
        ok(c, "--token", "s3cret", "kv", "put", "x", "1")
        assert ok(c, "kv", "get", "x", env={"RDBSYNC_API_TOKEN": "s3cret"}).strip() == "1"
    script = ok(None, env={"_RDBSYNC_COMPLETE": "bash_source"})
    assert "_RDBSYNC_COMPLETE" in script and "complete" in script
    started = time.monotonic()
    assert "kv" in ok(None, "--help")
    assert "--no-restart" in ok(None, "run", "--help")
    assert time.monotonic() - started < 30


def test_events_follow_keeps_up_with_a_restarted_node(cluster: Cluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDBSYNC_")}
    env["RDBSYNC_ENDPOINTS"] = ",".join(cluster.endpoints())
    cmd = [RDBSYNC, "-o", "json", "events", "--follow", "--poll", "0.2", "--duration", "40"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: list[dict] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(e["node"] == "n3" for e in events), 20, "n3's start-up events")
        restarted_at = time.time()
        cluster.signal("n3", signal.SIGKILL)
        cluster.start("n3")
        cluster.wait_ready(timeout=30, nodes=["n3"])
        # the restarted node's event log starts over at seq 1: its new events still show
        wait_for(
            lambda: any(e["node"] == "n3" and e["at"] > restarted_at and e["type"] == "unfenced" for e in events),
            20,
            "n3's events after its restart",
        )
    finally:
        proc.kill()
        proc.communicate()
        reader.join(5)
