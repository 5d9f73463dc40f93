"""A real cluster of node processes on free loopback ports, for integration tests.

Every wait is a bounded poll on an observable condition (HTTP answers), never a sleep
standing in for one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (bound, read, released)."""
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> Response:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
            status, hdrs = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        payload, status, hdrs = err.read(), err.code, dict(err.headers)
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode(errors="replace")
    return Response(status, parsed, hdrs)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a node may be down mid-poll
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


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


@dataclass
class NodeProc:
    id: str
    raft: str
    http_port: int
    data_dir: str
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Cluster:
    def __init__(
        self,
        base_dir: str,
        size: int = 3,
        *,
        env: dict[str, str] | None = None,
        cluster_address: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.base_dir = base_dir
        ports = free_ports(2 * size + 1)
        self.cluster_port = ports[-1] if cluster_address else None
        self.secret_file = os.path.join(base_dir, "cluster.secret")
        with open(self.secret_file, "w") as f:
            f.write(secrets.token_hex(16))
        os.chmod(self.secret_file, 0o600)
        self.env = dict(os.environ, **(env or {}))
        self.extra_args = extra_args or []
        self.nodes: dict[str, NodeProc] = {}
        for i in range(size):
            nid = f"n{i + 1}"
            self.nodes[nid] = NodeProc(nid, f"127.0.0.1:{ports[2 * i]}", ports[2 * i + 1], os.path.join(base_dir, nid))
        self.logs: dict[str, Any] = {}

    def argv(self, node: NodeProc, peers: list[NodeProc]) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "node",
            "node",
            "--id",
            node.id,
            "--raft",
            node.raft,
            "--http",
            f"127.0.0.1:{node.http_port}",
            "--data-dir",
            node.data_dir,
            "--secret-file",
            self.secret_file,
            "--log-format",
            "json",
            *self.extra_args,
            *node.extra_args,
        ]
        for p in peers:
            argv += ["--peer", f"{p.id}={p.raft}={p.url}"]
        if self.cluster_port:
            argv += ["--cluster-address", f"127.0.0.1:{self.cluster_port}"]
        return argv

    def start(self, nid: str | None = None, peers: list[NodeProc] | None = None) -> None:
        targets = [self.nodes[nid]] if nid else list(self.nodes.values())
        for node in targets:
            others = peers if peers is not None else [n for n in self.nodes.values() if n.id != node.id]
            if node.id in self.logs:
                self.logs[node.id].close()
            log = open(os.path.join(self.base_dir, f"{node.id}.log"), "ab")
            self.logs[node.id] = log
            node.proc = subprocess.Popen(
                self.argv(node, others),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 20.0, nodes: list[str] | None = None) -> None:
        for nid in nodes or list(self.nodes):
            wait_for(
                lambda nid=nid: http("GET", self.url(nid) + "/readyz", timeout=2).status == 200, timeout, f"{nid} ready"
            )

    def url(self, nid: str) -> str:
        return self.nodes[nid].url

    def status(self, nid: str) -> dict[str, Any]:
        resp = http("GET", self.url(nid) + "/v1/status", timeout=3)
        assert resp.status == 200, resp.body
        body: dict[str, Any] = resp.body
        return body

    def leader(self, among: list[str] | None = None, timeout: float = 15.0) -> str:
        """Wait until the given nodes agree on one leader with quorum; return its id."""
        ids = among or [n for n, p in self.nodes.items() if p.proc and p.proc.poll() is None]

        def agreed() -> str | None:
            leaders = set()
            for nid in ids:
                st = self.status(nid)
                if not st["quorum"]:
                    return None
                leaders.add(st["leader"])
            return leaders.pop() if len(leaders) == 1 and None not in leaders else None

        result: str = wait_for(agreed, timeout, "an agreed leader")
        return result

    def signal(self, nid: str, sig: int) -> None:
        proc = self.nodes[nid].proc
        assert proc is not None
        os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(10)

    def stop(self, nid: str) -> None:
        proc = self.nodes[nid].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                node.proc.wait()
        for log in self.logs.values():
            log.close()


@contextmanager
def running_cluster(base_dir: str, size: int = 3, **kwargs: Any) -> Iterator[Cluster]:
    """Start a cluster, wait until every node is ready, and always kill it afterwards."""
    c = Cluster(base_dir, size, **kwargs)
    c.start()
    try:
        c.wait_ready()
        yield c
    finally:
        c.close()
