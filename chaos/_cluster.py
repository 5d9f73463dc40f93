"""The cluster the chaos harness owns: N node processes on loopback, or each in its own
network namespace when ``NetLab`` is available. Process faults (kill -9 and restart,
SIGSTOP and SIGCONT) work in both modes."""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from typing import Any

from chaos._net import NetLab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout: float = 3.0,
    raw: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON body); status 0 means no HTTP answer (connection failed or timed out)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        payload, status = err.read(), err.code
    except (OSError, TimeoutError, ValueError) as exc:
        return 0, {"error": str(exc) or type(exc).__name__}
    if raw:
        return status, payload
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, {"raw": payload[:200].decode(errors="replace")}


def free_ports(count: int) -> list[int]:
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class ChaosNode:
    id: str
    raft: str
    http_address: str
    data_dir: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ChaosCluster:
    def __init__(
        self, base_dir: str, size: int, *, net: NetLab | None, quorum_grace: float = 3.0, app: str | None = None
    ) -> None:
        self.base_dir = base_dir
        self.app = app
        self.net = net
        self.quorum_grace = quorum_grace
        os.makedirs(base_dir, exist_ok=True)
        self.secret_file = os.path.join(base_dir, "cluster.secret")
        with open(os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(24))
        ids = [f"n{i + 1}" for i in range(size)]
        self.shared_url: str | None = None
        if net is not None:
            # Each node has its own namespace and address: the same ports for all.
            addresses = {nid: (f"{net.address[nid]}:7000", f"{net.address[nid]}:8000") for nid in ids}
        else:
            ports = free_ports(2 * size + 1)
            addresses = {
                nid: (f"127.0.0.1:{ports[2 * i]}", f"127.0.0.1:{ports[2 * i + 1]}") for i, nid in enumerate(ids)
            }
            self.shared_url = f"http://127.0.0.1:{ports[-1]}"
        self.nodes: dict[str, ChaosNode] = {
            nid: ChaosNode(nid, raft, http_address, os.path.join(base_dir, nid), os.path.join(base_dir, f"{nid}.log"))
            for nid, (raft, http_address) in addresses.items()
        }

    def argv(self, node: ChaosNode) -> list[str]:
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
            node.http_address,
            "--data-dir",
            node.data_dir,
            "--secret-file",
            self.secret_file,
            "--fault-injection",
            "--log-format",
            "json",
            "--request-timeout",
            "2",
            "--history-limit",
            "2000000",
            "--quorum-grace",
            str(self.quorum_grace),
            "--audit-interval",
            "5",
        ]
        for other in self.nodes.values():
            if other.id != node.id:
                argv += ["--peer", f"{other.id}={other.raft}={other.url}"]
        if self.shared_url:
            argv += ["--cluster-address", self.shared_url.removeprefix("http://")]
        if self.app:
            argv += ["--app", self.app]
        if self.net is not None:
            argv = self.net.prefix_argv(node.id) + argv
        return argv

    def start(self, nid: str) -> None:
        node = self.nodes[nid]
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                self.argv(node),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        node.paused = False

    def start_all(self) -> None:
        for nid in self.nodes:
            self.start(nid)

    def wait_ready(self, timeout: float = 60.0, nodes: list[str] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        pending = list(nodes or self.nodes)
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if http("GET", self.nodes[n].url + "/readyz", timeout=1)[0] != 200]
            if pending:
                time.sleep(0.2)
        return not pending

    def leader(self) -> str | None:
        for node in self.nodes.values():
            if not node.alive or node.paused:
                continue
            status, body = http("GET", node.url + "/v1/status", timeout=1)
            if status == 200 and body.get("quorum") and body.get("leader"):
                return str(body["leader"])
        return None

    def kill(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
        node.paused = False

    def pause(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.alive and not node.paused:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)
            node.paused = True

    def resume(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.alive and node.paused:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)
                    node.proc.terminate()
        deadline = time.monotonic() + 10
        for node in self.nodes.values():
            if node.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
