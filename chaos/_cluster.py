"""The cluster the chaos harness owns: N node processes on loopback, or each in its own
network namespace when ``NetLab`` is available. Process faults (kill -9 and restart,
SIGSTOP and SIGCONT) work in both modes.

The processes are started by the launcher every tool shares (``node.launcher``, standard
library only): here with the harness's node flags, and in namespace mode with each node's
own address and an ``ip netns exec`` command prefix.
"""

from __future__ import annotations

import signal
from typing import Any

from chaos._net import NetLab
from node.launcher import REPO, LocalCluster, free_ports
from node.launcher import Node as ChaosNode
from node.launcher import http as _http

__all__ = ["REPO", "ChaosCluster", "ChaosNode", "free_ports", "http"]

NODE_ARGS = [
    "--fault-injection",
    "--log-format",
    "json",
    "--request-timeout",
    "2",
    "--history-limit",
    "2000000",
    "--audit-interval",
    "5",
]


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
    try:
        reply = _http(method, url, body, timeout=timeout, headers=headers)
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc) or type(exc).__name__}
    if raw:
        return reply.status, reply.raw
    if isinstance(reply.body, str):
        return reply.status, {"raw": reply.body[:200]}
    return reply.status, reply.body


class ChaosCluster(LocalCluster):
    def __init__(
        self, base_dir: str, size: int, *, net: NetLab | None, quorum_grace: float = 3.0, app: str | None = None
    ) -> None:
        self.net = net
        self.quorum_grace = quorum_grace
        ids = [f"n{i + 1}" for i in range(size)]
        addresses = None
        if net is not None:
            # Each node has its own namespace and address: the same ports for all.
            addresses = {nid: (f"{net.address[nid]}:7000", f"{net.address[nid]}:8000") for nid in ids}
        super().__init__(
            base_dir,
            size,
            addresses=addresses,
            cluster_address=None if net is not None else "127.0.0.1:0",
            node_args=[*NODE_ARGS, "--quorum-grace", str(quorum_grace), *(["--app", app] if app else [])],
            log_dir=base_dir,
            command_prefix=net.prefix_argv if net is not None else None,
            cwd=REPO,
        )

    def start_all(self) -> None:
        self.start()

    def wait_ready(self, timeout: float = 60.0, nodes: Any = None) -> bool:  # type: ignore[override]
        """True once every given node answers /readyz 200 (False after ``timeout``)."""
        try:
            super().wait_ready(timeout, nodes)
        except TimeoutError:
            return False
        return True

    def leader(self) -> str | None:  # type: ignore[override]
        """The leader one running node reports with quorum, or None (no waiting)."""
        for node in self.nodes.values():
            if not node.alive or node.paused:
                continue
            status, body = http("GET", node.url + "/v1/status", timeout=1)
            if status == 200 and body.get("quorum") and body.get("leader"):
                return str(body["leader"])
        return None

    def pause(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.alive and not node.paused:
            self.signal(nid, signal.SIGSTOP)

    def resume(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.alive and node.paused:
            self.signal(nid, signal.SIGCONT)
        node.paused = False
