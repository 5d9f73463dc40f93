"""Blade tables on a live three-node cluster: convergence, drift repair, load events,
dry runs and data-plane answers that follow config."""

from __future__ import annotations

import random
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests.integration.cluster import Cluster, http, running_cluster, wait_for

pytestmark = pytest.mark.integration

TABLES = ("vservers", "lifs", "aggregates", "volumes", "export_rules", "cifs_shares")
BLADE_OF = {
    "vservers": "nblade",
    "lifs": "nblade",
    "export_rules": "nblade",
    "cifs_shares": "nblade",
    "vldb": "nblade",
    "aggregates": "dblade",
    "volumes": "dblade",
}


@pytest.fixture
def faulty_cluster(tmp_path: Any) -> Iterator[Cluster]:
    env = {"RDBSYNC_AUDIT_INTERVAL": "0.5", "RDBSYNC_COMPACTION_ENTRIES": "60"}
    with running_cluster(str(tmp_path), 3, env=env, extra_args=["--fault-injection"]) as c:
        yield c


def put_row(c: Cluster, nid: str, table: str, key: str, row: dict[str, Any], wait: bool = False) -> Any:
    return http("PUT", f"{c.url(nid)}/v1/tables/{table}/{key}" + ("?wait=applied" if wait else ""), row)


def committed(c: Cluster, nid: str) -> tuple[dict[str, dict[str, Any]], int]:
    out = {}
    revision = 0
    for table in TABLES:
        resp = http("GET", f"{c.url(nid)}/v1/tables/{table}?limit=10000")
        assert resp.status == 200, resp.body
        out[table] = resp.body["rows"]
        revision = max(revision, resp.body["revision"])
    return out, revision


def expected_projection(state: dict[str, dict[str, Any]], node: str) -> dict[str, dict[str, Any]]:
    """An independent reference of DESIGN.md's blade projections for ``node``."""
    home = {name: a["home_node"] for name, a in state["aggregates"].items()}
    return {
        "vservers": state["vservers"],
        "lifs": {k: r for k, r in state["lifs"].items() if r["home_node"] == node},
        "export_rules": state["export_rules"],
        "cifs_shares": state["cifs_shares"],
        "vldb": {
            k: {
                "volume": v["name"],
                "vserver": v["vserver"],
                "aggregate": v["aggregate"],
                "node": home.get(v["aggregate"]),
                "junction_path": v["junction_path"],
                "state": v["state"],
                "export_policy": v["export_policy"],
            }
            for k, v in state["volumes"].items()
        },
        "aggregates": {k: a for k, a in state["aggregates"].items() if a["home_node"] == node},
        "volumes": {k: v for k, v in state["volumes"].items() if home.get(v["aggregate"]) == node},
    }


def blades(c: Cluster, nid: str) -> dict[str, Any]:
    return {t: http("GET", f"{c.url(nid)}/v1/blades/{b}/{t}").body for t, b in BLADE_OF.items()}


def wait_converged(c: Cluster, revision: int, nodes: list[str] | None = None, timeout: float = 15) -> None:
    for nid in nodes or list(c.nodes):
        wait_for(
            lambda nid=nid: all(t["applied_revision"] >= revision for t in c.status(nid)["tables"].values()),
            timeout,
            f"{nid} at {revision}",
        )


def assert_blades_match(c: Cluster, nodes: list[str] | None = None) -> None:
    state, revision = committed(c, "n1")
    wait_converged(c, revision, nodes)
    for nid in nodes or list(c.nodes):
        want = expected_projection(state, nid)
        got = blades(c, nid)
        for table in BLADE_OF:
            assert got[table]["rows"] == want[table], (nid, table)
            assert got[table]["revision"] >= revision


def random_config_writes(c: Cluster, rng: random.Random, steps: int) -> None:
    nodes = list(c.nodes)
    for i in range(3):
        put_row(
            c, nodes[i % 3], "vservers", f"vs{i}", {"name": f"vs{i}", "protocols": ["nfs", "cifs"], "state": "running"}
        )
    for i in range(4):
        put_row(c, nodes[i % 3], "aggregates", f"ag{i}", {"name": f"ag{i}", "home_node": nodes[i % 3], "size_mb": 100})
    for step in range(steps):
        writer = rng.choice(nodes)
        kind = rng.random()
        if kind < 0.35:
            v = rng.randrange(12)
            r = put_row(
                c,
                writer,
                "volumes",
                f"vol{v}",
                {
                    "name": f"vol{v}",
                    "vserver": f"vs{rng.randrange(3)}",
                    "aggregate": f"ag{rng.randrange(4)}",
                    "size_mb": rng.randrange(1, 1000),
                    "state": rng.choice(["online", "offline"]),
                    "junction_path": f"/vol{v}",
                },
            )
        elif kind < 0.5:
            r = put_row(
                c,
                writer,
                "aggregates",
                f"ag{rng.randrange(4)}",
                {"name": f"ag{step % 4}", "home_node": rng.choice(nodes), "size_mb": 100},
            )
        elif kind < 0.65:
            vs, idx = rng.randrange(3), rng.randrange(1, 4)
            r = put_row(
                c,
                writer,
                "export_rules",
                f"vs{vs}:default:{idx}",
                {
                    "vserver": f"vs{vs}",
                    "policy": "default",
                    "index": idx,
                    "client_match": rng.choice(["10.0.0.0/8", "192.168.0.0/16", "0.0.0.0/0"]),
                    "access": rng.choice(["ro", "rw"]),
                },
            )
        elif kind < 0.75:
            n = rng.randrange(6)
            r = put_row(
                c,
                writer,
                "lifs",
                f"lif{n}",
                {
                    "name": f"lif{n}",
                    "vserver": f"vs{rng.randrange(3)}",
                    "address": f"10.0.0.{n + 1}",
                    "home_node": rng.choice(nodes),
                    "protocols": ["nfs"],
                },
            )
        elif kind < 0.85:
            vs, s = rng.randrange(3), rng.randrange(3)
            r = put_row(
                c,
                writer,
                "cifs_shares",
                f"vs{vs}:sh{s}",
                {"vserver": f"vs{vs}", "share": f"sh{s}", "path": f"/vol{rng.randrange(12)}"},
            )
        else:
            table = rng.choice(["volumes", "lifs", "export_rules"])
            rows = http("GET", f"{c.url(writer)}/v1/tables/{table}").body["rows"]
            if not rows:
                continue
            r = http("DELETE", f"{c.url(writer)}/v1/tables/{table}/{rng.choice(sorted(rows))}")
        # A body whose name disagrees with the key, or a reference race, is a clean 4xx.
        assert r.status in (200, 404, 409, 422), r.body


def test_random_config_writes_converge_on_every_node(faulty_cluster: Cluster) -> None:
    rng = random.Random(1234)
    random_config_writes(faulty_cluster, rng, 80)
    assert_blades_match(faulty_cluster)


def test_aggregate_move_reprojects_dependent_rows(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    put_row(c, "n1", "vservers", "vs", {"name": "vs", "protocols": ["nfs"]})
    put_row(c, "n1", "aggregates", "ag", {"name": "ag", "home_node": "n1", "size_mb": 10})
    for i in range(5):
        put_row(
            c,
            "n2",
            "volumes",
            f"v{i}",
            {"name": f"v{i}", "vserver": "vs", "aggregate": "ag", "size_mb": 1, "junction_path": f"/v{i}"},
        )
    moved = put_row(c, "n3", "aggregates", "ag", {"name": "ag", "home_node": "n2", "size_mb": 10}, wait=True)
    assert moved.status == 200 and all(n["outcome"] == "applied" for n in moved.body["nodes"].values())
    assert http("GET", f"{c.url('n1')}/v1/blades/dblade/volumes").body["rows"] == {}
    assert sorted(http("GET", f"{c.url('n2')}/v1/blades/dblade/volumes").body["rows"]) == [f"v{i}" for i in range(5)]
    vldb = http("GET", f"{c.url('n3')}/v1/blades/nblade/vldb").body["rows"]
    assert {r["node"] for r in vldb.values()} == {"n2"}


def test_tampering_is_repaired_by_the_audit_and_counted_as_drift(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    put_row(c, "n1", "vservers", "vs", {"name": "vs", "protocols": ["nfs"]}, wait=True)
    before = c.status("n2")["tables"]["vservers"]["drift_count"]
    r = http("POST", f"{c.url('n2')}/v1/debug/tamper", {"table": "vservers", "key": "vs", "row": {"name": "evil"}})
    assert r.status == 200
    http("POST", f"{c.url('n2')}/v1/debug/tamper", {"table": "vservers", "key": "ghost", "row": {"name": "ghost"}})
    wait_for(lambda: c.status("n2")["tables"]["vservers"]["drift_count"] == before + 2, 10, "drift counted")
    rows = http("GET", f"{c.url('n2')}/v1/blades/nblade/vservers").body["rows"]
    assert rows == {"vs": {"name": "vs", "state": "running", "protocols": ["nfs"], "root_volume": None}}


def test_dry_run_returns_the_plan_and_changes_nothing(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    # Slow the worker so the audit does not repair before we look.
    http("POST", f"{c.url('n3')}/v1/debug/delay", {"seconds": 5})
    put_row(c, "n1", "vservers", "dry", {"name": "dry", "protocols": ["cifs"]})
    wait_for(lambda: "dry" in http("GET", f"{c.url('n1')}/v1/blades/nblade/vservers").body["rows"], 10, "n1 applied")
    before = http("GET", f"{c.url('n3')}/v1/blades/nblade/vservers").body["rows"]
    plan = http("POST", f"{c.url('n3')}/v1/resync?table=vservers&dry_run=true")
    assert plan.status == 200 and plan.body["dry_run"] is True
    actions = plan.body["results"][0]["plan"]
    assert {"action": "add", "key": "dry"} in [{k: a[k] for k in ("action", "key")} for a in actions]
    assert http("GET", f"{c.url('n3')}/v1/blades/nblade/vservers").body["rows"] == before
    http("POST", f"{c.url('n3')}/v1/debug/delay", {"seconds": 0})
    done = http("POST", f"{c.url('n3')}/v1/resync?table=vservers")
    assert done.status == 200 and done.body["ok"] is True
    assert "dry" in http("GET", f"{c.url('n3')}/v1/blades/nblade/vservers").body["rows"]
    assert http("POST", f"{c.url('n3')}/v1/resync?table=nope").status == 404


def test_restart_is_a_load_event_with_full_resync(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    random_config_writes(c, random.Random(7), 20)
    c.stop("n2")
    c.start("n2")
    c.wait_ready(nodes=["n2"])
    tables = c.status("n2")["tables"]
    assert all(t["last_full_resync"] is not None for t in tables.values())
    assert_blades_match(c, ["n2"])


def test_lagging_follower_gets_a_snapshot_and_resyncs_in_full(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    leader = c.leader()
    lagging = next(n for n in c.nodes if n != leader)
    writer = next(n for n in c.nodes if n not in (leader, lagging))
    put_row(c, leader, "vservers", "snap", {"name": "snap", "protocols": ["nfs"]})
    c.signal(lagging, signal.SIGSTOP)
    lagging_raft = c.nodes[lagging].raft

    def leader_dropped_it() -> bool:
        members = c.status(leader)["members"]
        return not next(m for m in members if m["raft_address"] == lagging_raft)["connected"]

    try:
        # Once the leader drops the connection, nothing is buffered for the paused node.
        wait_for(leader_dropped_it, 15, "the leader to drop the paused follower")
        for i in range(150):  # well past the 60-entry compaction threshold
            assert http("PUT", f"{c.url(writer)}/v1/kv/filler{i}", {"value": i}).status == 200
        put_row(c, writer, "aggregates", "snap-ag", {"name": "snap-ag", "home_node": lagging, "size_mb": 1})
        wait_for(lambda: c.status(leader)["last_log_index"] - c.status(leader)["commit_index"] < 5, 10, "commit")
    finally:
        c.signal(lagging, signal.SIGCONT)
    wait_for(lambda: c.status(lagging)["snapshot_loads"] >= 1, 20, "snapshot installed on the lagging follower")
    assert_blades_match(c, [lagging])
    assert "snap-ag" in http("GET", f"{c.url(lagging)}/v1/blades/dblade/aggregates").body["rows"]


def test_data_plane_follows_config(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    put_row(c, "n1", "vservers", "vs1", {"name": "vs1", "protocols": ["nfs", "cifs"]})
    put_row(c, "n1", "aggregates", "a1", {"name": "a1", "home_node": "n3", "size_mb": 10})
    put_row(
        c,
        "n2",
        "volumes",
        "vol1",
        {"name": "vol1", "vserver": "vs1", "aggregate": "a1", "size_mb": 5, "junction_path": "/data"},
    )
    put_row(
        c,
        "n2",
        "cifs_shares",
        "vs1:docs",
        {"vserver": "vs1", "share": "docs", "path": "/data/docs", "acl": [{"user": "Everyone", "permission": "read"}]},
    )
    r = put_row(
        c,
        "n3",
        "export_rules",
        "vs1:default:1",
        {"vserver": "vs1", "policy": "default", "index": 1, "client_match": "10.0.0.0/8", "access": "rw"},
        wait=True,
    )
    revision = r.body["revision"]

    def mount(nid: str, client: str = "10.1.1.1") -> Any:
        return http("GET", f"{c.url(nid)}/v1/data/nfs/mount?vserver=vs1&path=/data/x&client={client}")

    for nid in c.nodes:
        ans = mount(nid).body
        assert ans["access"] == "rw" and ans["volume"] == "vol1" and ans["node"] == "n3"
        assert ans["revision"] >= revision
        assert mount(nid, "172.16.0.1").body["access"] == "denied"
        share = http("GET", f"{c.url(nid)}/v1/data/cifs/connect?vserver=vs1&share=docs").body
        assert share["access"] == "ro" and share["volume"] == "vol1"
    put_row(
        c,
        "n1",
        "export_rules",
        "vs1:default:1",
        {"vserver": "vs1", "policy": "default", "index": 1, "client_match": "10.0.0.0/8", "access": "ro"},
        wait=True,
    )
    assert {mount(nid).body["access"] for nid in c.nodes} == {"ro"}
    put_row(
        c,
        "n1",
        "volumes",
        "vol1",
        {
            "name": "vol1",
            "vserver": "vs1",
            "aggregate": "a1",
            "size_mb": 5,
            "junction_path": "/data",
            "state": "offline",
        },
        wait=True,
    )
    assert {mount(nid).body["access"] for nid in c.nodes} == {"denied"}
    assert http("GET", f"{c.url('n1')}/v1/data/nfs/mount?vserver=vs1&path=/data&client=nope").status == 422
    assert http("GET", f"{c.url('n1')}/v1/data/nfs/mount?vserver=vs1").status == 422


def test_table_api_errors(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    url = c.url("n1")
    assert http("GET", f"{url}/v1/tables").body["tables"]["volumes"]["schema"]["properties"]["junction_path"]
    mismatch = http("PUT", f"{url}/v1/tables/vservers/a", {"name": "b"})
    assert mismatch.status == 422 and mismatch.body["error"]["code"] == "key_mismatch"
    bad = http(
        "PUT",
        f"{url}/v1/tables/export_rules/x:y:1",
        {"vserver": "x", "policy": "y", "index": 1, "client_match": "not-a-cidr", "access": "rw"},
    )
    assert bad.status == 422 and "client_match" in bad.body["error"]["message"]
    assert http("PUT", f"{url}/v1/tables/nope/a", {"name": "a"}).status == 404
    missing = http(
        "PUT", f"{url}/v1/tables/lifs/l1", {"name": "l1", "vserver": "ghost", "address": "10.0.0.1", "home_node": "n1"}
    )
    assert missing.status == 422 and missing.body["error"]["code"] == "missing_reference"
    raw = http("PUT", f"{url}/v1/kv/tables/vservers/raw", {"value": {"name": "other"}})
    assert raw.status == 422
    assert http("PUT", f"{url}/v1/kv/tables/vservers/raw", {"value": {"name": "raw"}}).status == 200
    assert http("GET", f"{url}/v1/tables/vservers/raw").body["row"]["state"] == "running"
    assert http("GET", f"{url}/v1/blades/xblade/vservers").status == 404


def test_restore_is_a_load_event_on_every_node(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    random_config_writes(c, random.Random(99), 25)
    backup = http_raw("GET", f"{c.url('n2')}/v1/snapshot")
    saved, _ = committed(c, "n1")
    put_row(c, "n1", "vservers", "after-backup", {"name": "after-backup", "protocols": []})
    loads_before = {nid: c.status(nid)["snapshot_loads"] for nid in c.nodes}
    restored = http("POST", f"{c.url('n3')}/v1/restore", raw=backup)
    assert restored.status == 200, restored.body
    now, _ = committed(c, "n1")
    assert now == saved  # exactly the backup: the later row is gone
    for nid in c.nodes:
        wait_for(lambda nid=nid: c.status(nid)["snapshot_loads"] > loads_before[nid], 10, f"{nid} load event")
    assert_blades_match(c)
    assert "after-backup" not in http("GET", f"{c.url('n2')}/v1/blades/nblade/vservers").body["rows"]
    garbage = http("POST", f"{c.url('n3')}/v1/restore", raw=b"not a snapshot")
    assert garbage.status == 422 and garbage.body["error"]["applied"] is False
    # Snapshots that pass the outline but hold what the API cannot serve change nothing.
    doc = msgpack.unpackb(backup, raw=False, strict_map_key=False)
    for kvs in (
        [["x/r", 1, "x", 1, 1]],  # a revision that is a string (found by fuzzing)
        [["x/r", b"bytes", 1, 1, 1]],  # a value that is not JSON
        [["tables/vservers/v", {"protocols": []}, 1, 1, 1]],  # a row that fails its schema
        [["tables/volumes/v", {"name": "v", "vserver": "no", "aggregate": "no", "size_mb": 1}, 1, 1, 1]],
    ):
        bad = http("POST", f"{c.url('n3')}/v1/restore", raw=msgpack.packb({**doc, "kvs": kvs}, use_bin_type=True))
        assert bad.status == 422 and bad.body["error"]["applied"] is False, bad.body
    assert committed(c, "n1")[0] == saved
    # a refused restore changes nothing, so every node is ready again once its resyncs settle
    for nid in c.nodes:
        wait_for(lambda nid=nid: http("GET", f"{c.url(nid)}/readyz").status == 200, 15, f"{nid} ready")


def http_raw(method: str, url: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
        data: bytes = resp.read()
        return data


def test_wait_applied_times_out_with_504_naming_the_laggard(faulty_cluster: Cluster) -> None:
    c = faulty_cluster
    assert http("POST", f"{c.url('n3')}/v1/debug/delay", {"seconds": 3}).status == 200
    r = http(
        "PUT", f"{c.url('n1')}/v1/tables/vservers/slow?wait=applied&timeout=0.5", {"name": "slow", "protocols": ["nfs"]}
    )
    assert r.status == 504 and r.body["error"]["code"] == "wait_timeout", r.body
    details = r.body["error"]["details"]
    assert details["laggards"] == ["n3"] and r.body["error"]["applied"] is True
    assert details["nodes"]["n1"]["outcome"] == "applied" and details["nodes"]["n3"]["outcome"] == "lagging"
    http("POST", f"{c.url('n3')}/v1/debug/delay", {"seconds": 0})
    assert http("GET", f"{c.url('n2')}/v1/tables/vservers/slow").status == 200  # the write itself committed
    bad = http("PUT", f"{c.url('n1')}/v1/tables/vservers/x?wait=soon", {"name": "x"})
    assert bad.status == 422 and bad.body["error"]["applied"] is False
