"""rdbsync.Client / AsyncClient against real clusters: exactly-once writes across a leader
kill, a watch that resumes on another node, a watch that relists after a compaction."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from rdbsync import AsyncClient, Client, Conflict, InvalidRequest, NotFound, Unavailable
from tests.integration.cluster import Cluster, free_ports, running_cluster, wait_for

pytestmark = pytest.mark.integration

WRITERS = 4
WRITES = 60


def test_every_write_is_applied_exactly_once_across_a_leader_kill(cluster: Cluster) -> None:
    leader = cluster.leader()
    order = [leader] + [n for n in cluster.nodes if n != leader]  # aim at the leader: writes in flight when it dies
    client = Client([cluster.url(n) for n in order], timeout=60, attempt_timeout=4)
    done = [0] * WRITERS
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(WRITES):
                client.put(f"counter/{w}", i)
                done[w] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(done) >= WRITERS * WRITES // 3, 60, "a third of the writes")
    cluster.signal(leader, signal.SIGKILL)
    cluster.start(leader)
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert done == [WRITES] * WRITERS

    for w in range(WRITERS):
        kv = client.get(f"counter/{w}")
        # every put bumps the version: one more would be a write applied twice, one less a lost one
        assert (kv.value, kv.version) == (WRITES - 1, WRITES), kv
        values = []
        for ev in client.watch(f"counter/{w}", from_revision=kv.create_revision):
            assert ev.type == "put" and ev.kv is not None
            values.append(ev.kv.value)
            if ev.revision >= kv.mod_revision:
                break
        assert values == list(range(WRITES))
    client.close()


def test_watch_resumes_on_another_node_when_its_node_dies(cluster: Cluster) -> None:
    leader = cluster.leader()
    victim, *rest = [n for n in cluster.nodes if n != leader]
    watcher = Client([cluster.url(victim), *(cluster.url(n) for n in rest), cluster.url(leader)])
    writer = Client([cluster.url(leader), *(cluster.url(n) for n in rest)])
    first = writer.put("w/00", 0)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def watch() -> None:
        for ev in watcher.watch("w/", from_revision=first, stop=stop, give_up_after=30):
            assert ev.kv is not None
            seen.append((ev.revision, ev.kv.key))
            if len(seen) >= 20:
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    for i in range(1, 10):
        writer.put(f"w/{i:02d}", i)
    wait_for(lambda: len(seen) >= 10, 20, "the first ten events")
    cluster.signal(victim, signal.SIGKILL)  # the watch's stream dies with its node
    for i in range(10, 20):
        writer.put(f"w/{i:02d}", i)
    t.join(60)
    stop.set()
    assert [k for _, k in seen] == [f"w/{i:02d}" for i in range(20)]  # nothing missed, nothing twice
    revisions = [r for r, _ in seen]
    assert revisions == sorted(set(revisions))
    watcher.close()
    writer.close()


def test_watch_relists_after_a_compaction_and_goes_on(tmp_path) -> None:
    with running_cluster(str(tmp_path), 1, extra_args=["--history-limit", "5"]) as c:
        client = Client([c.url("n1")])
        for i in range(20):
            client.put(f"r/{i:02d}", i)
        client.delete("r/00")
        events = client.watch("r/", from_revision=1)
        reset = next(events)
        assert reset.type == "reset"  # revision 1 is long compacted: a fresh listing instead
        assert [kv.key for kv in reset.kvs] == [f"r/{i:02d}" for i in range(1, 20)]
        revision = client.put("r/new", "x")
        ev = next(events)
        assert (ev.type, ev.revision, ev.kv and ev.kv.key) == ("put", revision, "r/new")
        client.close()


def test_typed_errors_and_table_helpers(cluster: Cluster) -> None:
    client = Client([cluster.url(n) for n in cluster.nodes])
    with pytest.raises(NotFound) as nf:
        client.get("missing")
    assert nf.value.code == "not_found" and nf.value.status == 404
    rev = client.put("cas", 1)
    with pytest.raises(Conflict) as cf:
        client.put("cas", 2, prev_revision=rev + 100)
    assert cf.value.code == "cas_conflict" and cf.value.details["current"]["value"] == 1
    assert "vservers" in client.tables()
    out = client.put_row("vservers", "vs9", {"name": "vs9", "protocols": ["nfs"]}, wait="applied", wait_timeout=10)
    assert {r["outcome"] for r in out["nodes"].values()} == {"applied"}
    for nid in cluster.nodes:  # wait=applied: every node's blade table already has it
        blade = client.blade_table("nblade", "vservers", endpoint=cluster.url(nid))
        assert "vs9" in blade["rows"]
    assert client.row("vservers", "vs9")["row"]["name"] == "vs9"
    with pytest.raises(InvalidRequest):
        client.put_row("volumes", "v1", {"name": "v1", "vserver": "nope", "aggregate": "nope", "size_mb": 1})
    client.close()


def test_an_endpoint_that_is_down_is_skipped() -> None:
    dead = [f"http://127.0.0.1:{p}" for p in free_ports(2)]
    with Client(dead, timeout=1.0) as client:
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            client.get("k")
        assert time.monotonic() - t0 < 5


async def test_async_client(cluster: Cluster) -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    async with AsyncClient([dead, *(cluster.url(n) for n in cluster.nodes)]) as client:
        rev = await client.put("a/1", {"x": 1})
        assert (await client.get("a/1")).value == {"x": 1}
        result = await client.txn(
            [{"key": "a/1", "target": "version", "value": 1}], [{"op": "put", "key": "a/2", "value": 2}]
        )
        assert result["succeeded"]
        page = await client.list_all("a/")
        assert [kv.key for kv in page.kvs] == ["a/1", "a/2"]
        got = []
        async for ev in client.watch("a/", from_revision=rev):
            got.append(ev.kv.key if ev.kv else None)
            if len(got) == 2:
                break
        assert got == ["a/1", "a/2"]
        with pytest.raises(NotFound):
            await client.get("a/none")
        out = await client.put_row("vservers", "vsa", {"name": "vsa", "protocols": ["cifs"]}, wait="applied")
        assert set(out["nodes"]) == set(cluster.nodes)
        blade = await client.blade_table("nblade", "vservers", endpoint=cluster.url("n3"))
        assert "vsa" in blade["rows"]
        plan = await client.resync("vservers", dry_run=True)
        assert plan["dry_run"] and plan["ok"]
        backup = await client.snapshot()
        await client.delete("a/1")
        restored = await client.restore(backup)
        assert restored["revision"] > 0 and (await client.get("a/1")).value == {"x": 1}
