"""The launcher's pure parts: restart backoff and the cluster-change lines."""

from __future__ import annotations

import json
import socket

from node import cli, launcher
from node.launcher import Backoff, cluster_view, describe_exit, exit_line, exit_reason, view_changes
from rdb import _journal


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run() -> None:
    b = Backoff(1.0, 30.0, reset_after=30.0)
    assert [b.delay(ran_for=2.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.delay(ran_for=31.0) == 1  # it ran a while before dying: start over
    assert b.delay(ran_for=0.5) == 2


def test_exit_descriptions() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with status 1"


def _cluster(leader: str | None, term: int, down: set[str] = frozenset(), fences: dict | None = None) -> dict:
    nodes = []
    for nid in ("n1", "n2", "n3"):
        if nid in down:
            nodes.append({"id": nid, "reachable": False})
            continue
        role = "leader" if nid == leader else "follower"
        f = [{"protocol": p, "table": t, "cause": c} for p, (t, c) in (fences or {}).get(nid, {}).items()]
        nodes.append(
            {"id": nid, "reachable": True, "role": role, "quorum": leader is not None, "term": term, "fences": f}
        )
    return {"nodes": nodes}


def test_one_line_per_change() -> None:
    start = cluster_view(_cluster("n1", 1))
    assert view_changes(None, start) == ["leader elected: n1 (term 1)"]
    assert view_changes(start, start) == []
    down = cluster_view(_cluster(None, 1, down={"n1"}))
    assert view_changes(start, down) == ["no leader", "node n1 down (unreachable)"]
    elected = cluster_view(_cluster("n2", 3, down={"n1"}))
    assert view_changes(down, elected) == ["leader elected: n2 (term 3)"]
    catching = {"n1": {p: ("*", "catching_up") for p in ("nfs", "cifs", "iscsi")}}
    back = cluster_view(_cluster("n2", 3, fences=catching))
    assert view_changes(elected, back) == [
        "node n1 up",
        "n1: catching up (fenced until it has applied what the leader committed)",
    ]
    serving = cluster_view(_cluster("n2", 3))
    assert view_changes(back, serving) == ["n1: serving (unfenced cifs, iscsi, nfs)"]
    fenced = cluster_view(_cluster("n2", 3, fences={"n3": {"nfs": ("vldb", "not_synced")}}))
    assert view_changes(serving, fenced) == ["n3: fenced nfs (vldb not_synced)"]
    assert view_changes(fenced, serving) == ["n3: serving (unfenced nfs)"]


def test_the_launchers_exit_codes_are_the_nodes() -> None:
    # the launcher restates them (standard library only); they must not drift apart
    assert launcher.EXIT_STORAGE_CORRUPT == cli.EXIT_STORAGE_CORRUPT == 65
    assert launcher.FAIL_STOP_EXIT == _journal.FAIL_STOP_EXIT == 74


def test_exit_65_is_not_restarted_and_says_what_to_do() -> None:
    restart, line = exit_line(
        "n2", 65, data_dir="data/n2", reason="the snapshot data/n2/raft.snapshot cannot be loaded", restart_in=4.0
    )
    assert not restart
    assert line == (
        "node n2 stopped: its data files are unusable (exit 65): the snapshot data/n2/raft.snapshot cannot be loaded; "
        "not restarting: remove data/n2 and the launcher rejoins it as a new member "
        "(removed from the cluster, started as a learner that copies the data from the leader, then added)"
    )


def test_exit_65_under_no_restart_says_to_remove_the_data_first() -> None:
    restart, line = exit_line("n2", 65, data_dir="data/n2", reason=None, restart_in=None, supervised=False)
    assert not restart
    assert line.endswith("; --no-restart: leaving it down (remove data/n2 before starting it again)")


def test_exit_74_is_restarted_with_backoff_and_says_why() -> None:
    restart, line = exit_line("n2", 74, data_dir="data/n2", reason=None, restart_in=4.0)
    assert restart
    assert line == "node n2 stopped: it could not write to its disk (exit 74); restarting in 4s"
    restart, line = exit_line("n2", 74, data_dir="d", reason="journal sync failed (ENOSPC)", restart_in=None)
    assert not restart
    assert (
        line == "node n2 stopped: it could not write to its disk (exit 74): journal sync failed (ENOSPC); "
        "--no-restart: leaving it down"
    )


def test_other_exits_keep_their_lines_and_a_signal_quotes_no_reason() -> None:
    assert exit_line("n1", -9, data_dir="d", reason="noise", restart_in=1.0) == (
        True,
        "node n1 was killed by SIGKILL; restarting in 1s",
    )
    assert exit_line("n1", 1, data_dir="d", reason="cannot bind", restart_in=2.0) == (
        True,
        "node n1 exited with status 1: cannot bind; restarting in 2s",
    )


def test_exit_reason_picks_the_last_error_record() -> None:
    js = [
        json.dumps({"level": "info", "msg": "starting"}),
        json.dumps({"level": "critical", "msg": "node n2 refuses to start: the snapshot x cannot be loaded"}),
        "",
    ]
    assert exit_reason(js) == "node n2 refuses to start: the snapshot x cannot be loaded"
    text = [
        "2026-12-01 10:00:00,000 n2 INFO node: up",
        "2026-12-01 10:00:01,000 n2 CRITICAL rdb.journal: journal sync failed (No space left on device); stopping",
        "2026-12-01 10:00:01,000 n2 INFO node: bye",
    ]
    assert exit_reason(text) == "journal sync failed (No space left on device); stopping"
    assert exit_reason(["failpoint journal.sync.before_fsync: enospc"]) == "failpoint journal.sync.before_fsync: enospc"
    assert exit_reason([]) is None
    assert exit_reason(["x" * 500], limit=50) == "x" * 47 + "..."


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    for _ in range(20):
        ports = launcher.free_ports(6)
        assert len(set(ports)) == 6
        # An outgoing socket (a client's, Raft's) is given a port of [low, high]: it
        # could take one of these between the pick and the listener's bind.
        assert not any(low <= p <= high for p in ports), (ports, low, high)
        base = launcher.port_block(4)
        assert not any(low <= p <= high for p in range(base, base + 4))
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", ports[0]))  # free when picked, and still
        listener.listen()
        assert launcher._all_free("127.0.0.1", ports[1:])
        assert not launcher._all_free("127.0.0.1", ports[:2])
    finally:
        listener.close()
