"""Agents in a chaos run (``rdbsync chaos --agents``): one data-plane daemon per node
(``chaos.agent_daemon``, embedding ``rdbsync.agent.Agent`` in batch mode) holding the
app's agent table (``AppModel.agent_table``), and a probe that records what each daemon
would serve. ``chaos._checkers.check_agents`` judges the answers.

A daemon runs beside its node (in the node's network namespace when there is one, so a
partition cuts the node and its daemon off together) and outlives every fault of its
node: a kill, a pause, a wipe and rejoin. Nodes expect agent ``edge``
(``--agent edge=<table>``); a node is not ready until its daemon has loaded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from chaos._cluster import REPO, free_ports, http
from chaos._workload import Workload

if TYPE_CHECKING:
    from chaos._cluster import ChaosCluster

AGENT_NAME = "edge"
AGENT_PORT = 9000  # in a node's own namespace: the same port for every daemon
AGENT_GRACE_S = 1.0  # the daemon fails closed this long after it last heard from its node


def node_flags(table: str) -> list[str]:
    """What every node is started with so it expects the daemon (and fences on it)."""
    return ["--agent", f"{AGENT_NAME}={table}", "--agent-timeout", "1"]


class AgentFleet:
    """The daemons of one run, by node id. Not thread-safe: the runner's thread only."""

    def __init__(self, cluster: ChaosCluster, table: str, log_dir: str) -> None:
        self.cluster = cluster
        self.table = table
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start_all(self) -> None:
        net = self.cluster.net
        ports = free_ports(len(self.cluster.nodes)) if net is None else []
        for i, (nid, node) in enumerate(sorted(self.cluster.nodes.items())):
            host = net.address[nid] if net is not None else "127.0.0.1"
            port = AGENT_PORT if net is not None else ports[i]
            argv = [sys.executable, "-m", "chaos.agent_daemon", "--node", node.url, "--name", AGENT_NAME]
            argv += ["--tables", self.table, "--host", host, "--port", str(port), "--grace", str(AGENT_GRACE_S)]
            argv += ["--batch"]
            prefix = net.prefix_argv(nid) if net is not None else []
            with open(os.path.join(self.log_dir, f"agent-{nid}.log"), "ab") as log:
                self.procs[nid] = subprocess.Popen([*prefix, *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            self.urls[nid] = f"http://{host}:{port}"

    def ask(self, nid: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """What the daemon beside ``nid`` would serve: ``{"serving", "rows" (of the agent
        table; None unless serving), "revision" (the rows are exactly at), "why"}``, or
        None if it did not answer."""
        status, body = http("GET", self.urls[nid] + "/", timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            return None
        serving = bool(body.get("serving"))
        return {
            "serving": serving,
            "rows": (body.get("rows") or {}).get(self.table, {}) if serving else None,
            "revision": body.get("rows_revision"),
            "why": body.get("why"),
        }

    def wait_answering(self, timeout: float) -> bool:
        """True once every daemon answers (serving or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.ask(nid, 1.0) is not None for nid in self.urls):
                return True
            time.sleep(0.1)
        return False

    def settle(self, want: dict[str, dict[str, Any]], timeout: float) -> dict[str, Any]:
        """After healing: wait (bounded) until every daemon serves exactly ``want[node]``;
        return what each served last (``{"serving", "rows", "why"}``, None if it never
        answered)."""
        last: dict[str, Any] = {nid: None for nid in self.urls}
        deadline = time.monotonic() + timeout
        while True:
            for nid in self.urls:
                last[nid] = self.ask(nid) or last[nid]
            done = all(v is not None and v["serving"] and v["rows"] == want.get(n) for n, v in last.items())
            if done or time.monotonic() >= deadline:
                return last
            time.sleep(0.2)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


class AgentProbe(Workload):
    """Asks a daemon what it would serve: ``{"serving", "rows_revision", "rows"}``.
    Recorded as kind "agent": ok with ``{"revision", "rows"}`` (the daemon's rows of the
    agent table and the revision they are exactly at) when it serves, fail otherwise."""

    def __init__(self, *args: Any, fleet: AgentFleet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fleet = fleet

    def step(self) -> None:
        nid = self.rng.choice(sorted(self.fleet.urls))
        invoke = self.history.now()
        answer = self.fleet.ask(nid)
        complete = self.history.now()
        if answer is not None and answer["serving"]:
            outcome, result = "ok", {"revision": answer["revision"], "rows": answer["rows"]}
        else:
            outcome, result = "fail", {"why": answer["why"] if answer is not None else "no answer"}
        self.history.record(
            {
                "process": self.process,
                "kind": "agent",
                "f": "serve",
                "key": self.fleet.table,
                "value": None,
                "node": nid,
                "invoke": invoke,
                "complete": complete,
                "outcome": outcome,
                "result": result,
            }
        )
        time.sleep(0.02)
