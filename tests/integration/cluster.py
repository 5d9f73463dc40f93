"""A real cluster of node processes on free loopback ports, for integration tests: the
launcher's ``LocalCluster`` (node/launcher.py, the same one ``scripts/run`` uses) with the
tests' defaults (JSON logs in ``<base_dir>/<id>.log``, a fresh secret).

Every wait is a bounded poll on an observable condition (HTTP answers), never a sleep
standing in for one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from node.launcher import REPO, LocalCluster, Node, free_ports, http, wait_for
from node.launcher import Reply as Response
from rdb import ReplicatedStore
from rdb._raft import RaftNode

__all__ = [
    "REPO",
    "Cluster",
    "NodeProc",
    "Response",
    "free_ports",
    "http",
    "put_through_failover",
    "running_cluster",
    "wait_for",
]


class NodeProc(Node):
    """A node to add to a ``Cluster`` by hand (membership tests); logs next to its data."""

    def __init__(
        self, node_id: str, raft: str, http_port: int, data_dir: str, *, extra_args: list[str] | None = None
    ) -> None:
        log_path = os.path.join(os.path.dirname(data_dir), f"{node_id}.log")
        super().__init__(node_id, raft, f"127.0.0.1:{http_port}", data_dir, log_path, list(extra_args or []))


def put_through_failover(url: str, body: Any, *, within: float = 15.0) -> Response:
    """PUT the way a careful client does while a leader may be failing over.

    A 503 (for instance ``no_quorum``: the leader was just killed and the request timeout
    ran out before the election finished) or a dropped connection is retried with the
    same Idempotency-Key, so the write is applied at most once. Returns the first other
    answer (or the last 503 after ``within`` seconds).
    """
    headers = {"Idempotency-Key": f"failover-{secrets.token_hex(8)}"}
    deadline = time.monotonic() + within
    while True:
        try:
            resp: Response | None = http("PUT", url, body, headers=headers)
        except OSError:  # the node behind a shared address went away mid-request
            resp = None
        retryable = resp is None or resp.status == 503
        if resp is not None and (not retryable or time.monotonic() > deadline):
            return resp
        if time.monotonic() > deadline:
            raise AssertionError(f"PUT {url} never got an answer within {within}s")
        time.sleep(0.1)  # a refusal can be immediate (no leader known yet); do not spin


class Cluster(LocalCluster):
    def __init__(
        self,
        base_dir: str,
        size: int = 3,
        *,
        env: dict[str, str] | None = None,
        cluster_address: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(
            base_dir,
            size,
            cluster_address="127.0.0.1:0" if cluster_address else None,
            node_args=["--log-format", "json", *(extra_args or [])],
            env=dict(os.environ, **(env or {})),
            log_dir=base_dir,
            cwd=REPO,
        )
        self.cluster_port = int(self.cluster_address.rpartition(":")[2]) if self.cluster_address else None

    def url(self, nid: str) -> str:
        return self.nodes[nid].url

    def close(self) -> None:
        self.kill_all()


@contextmanager
def running_cluster(base_dir: str, size: int = 3, **kwargs: Any) -> Iterator[Cluster]:
    """Start a cluster, wait until every node is ready, and always kill it afterwards."""
    c = Cluster(base_dir, size, **kwargs)
    c.start()
    try:
        c.wait_ready(timeout=20.0)
        yield c
    finally:
        c.close()


async def in_process_stores(tmp_path: Any) -> list[ReplicatedStore]:
    """Three ReplicatedStores of one cluster in this process, started on the running loop
    (for tests that reach into the Raft layer; the caller closes them)."""
    loop = asyncio.get_running_loop()
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    stores = [
        ReplicatedStore(a, [b for b in addrs if b != a], os.path.join(str(tmp_path), f"s{i}"), password="pw")
        for i, a in enumerate(addrs)
    ]
    for s in stores:
        s.start(loop)
    return stores


async def settled_stores(stores: list[ReplicatedStore]) -> tuple[ReplicatedStore, list[ReplicatedStore]]:
    """(leader, followers) of ``in_process_stores`` once a write has committed through
    the first store and exactly one of them leads."""
    for _ in range(200):
        if (await stores[0].put("warm", 0, timeout=10))["status"] == "ok":
            leaders = [s for s in stores if s.raft._isLeader()]
            if len(leaders) == 1:
                return leaders[0], [s for s in stores if s is not leaders[0]]
        await asyncio.sleep(0.05)
    raise AssertionError("no leader")


def on_tick(raft: RaftNode, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once on ``raft``'s tick thread and return its result."""
    done = threading.Event()
    out: list[Any] = []

    def once() -> None:
        if not done.is_set():
            try:
                out.append(fn())
            finally:
                done.set()

    raft.addOnTickCallback(once)
    assert done.wait(10), "the tick thread never ran the callback"
    return out[0]
