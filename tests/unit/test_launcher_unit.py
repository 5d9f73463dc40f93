"""The launcher's pure parts: restart backoff and the cluster-change lines."""

from __future__ import annotations

from node.launcher import Backoff, cluster_view, describe_exit, view_changes


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
