"""Start and supervise local node processes: the one launcher behind ``rdbsync run`` /
``scripts/run``, the integration tests, the chaos harness and the benchmarks.

It imports only the standard library (``scripts/check_imports.py`` enforces it), so the
harnesses use it without loading the node, and it talks to nodes over HTTP only.

- ``http`` is the one blocking HTTP helper: it returns a ``Reply`` for every HTTP
  answer (4xx and 5xx included) and raises ``OSError`` when there is none.
- ``free_ports`` / ``port_block`` pick ports at run time; ``wait_for`` is the one bounded
  poll (``WaitTimeout`` after its deadline).
- ``LocalCluster`` owns N node processes (argv, data dirs, the cluster secret, the shared
  cluster address, a command prefix hook such as ``ip netns exec``); every method runs on
  the caller's thread.
- ``Supervisor`` runs ``rdbsync run``: restarts a node that dies with ``Backoff`` (except
  one whose data files are unusable, exit 65, until its data directory is removed), prints
  one line per cluster change (``exit_line`` explains a node's exit and quotes its last
  log line), and stops every node on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The node's deliberate exit statuses. The launcher imports only the standard library, so
# they are restated here; tests/unit/test_launcher_unit.py keeps them equal to the sources.
EXIT_STORAGE_CORRUPT = 65  # node.cli.EXIT_STORAGE_CORRUPT: its data files cannot be used safely
FAIL_STOP_EXIT = 74  # rdb._journal.FAIL_STOP_EXIT: it could not persist (ENOSPC, EIO)


# ---------------------------------------------------------------- HTTP, ports, waiting


@dataclass
class Reply:
    """One HTTP answer: ``body`` is parsed JSON, the text if it is not JSON, or None."""

    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes = b""


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """Send one request (JSON ``body`` or ``raw`` bytes). Raises ``OSError`` (a
    ``ConnectionError`` for a broken answer, ``TimeoutError``) when there is no answer."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and raw is None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        try:
            payload = err.read()
        except (OSError, HTTPException) as exc:
            raise ConnectionError(f"{method} {url}: answer cut short: {exc!r}") from exc
        status, hdrs = err.code, dict(err.headers)
    except HTTPException as exc:  # BadStatusLine, IncompleteRead: no usable answer
        raise ConnectionError(f"{method} {url}: {exc!r}") from exc
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode(errors="replace")
    return Reply(status, parsed, hdrs, payload)


class WaitTimeout(TimeoutError):
    """``wait_for`` ran out of time; the message names what it waited for."""


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy and return it. Exceptions from
    ``condition`` (a node not listening yet) count as "not yet"; raises ``WaitTimeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a node may be down mid-poll
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct free TCP ports on ``host`` (bound together, then released), below the
    ephemeral range: a port from that range may be taken by the outgoing socket of a
    client or of Raft before its listener binds it (a test's agent daemon failed to
    start on 2026-12-07 with EADDRINUSE). Raises ``OSError`` if none are found."""
    start, stop = _static_port_range(count)
    rng = random.Random()
    for _ in range(200):
        ports = rng.sample(range(start, stop), count)
        if _all_free(host, ports):
            return ports
    raise OSError(f"found no {count} free ports on {host}")


def port_block(count: int, host: str = "127.0.0.1") -> int:
    """First of ``count`` consecutive free ports, below the ephemeral range (as
    ``free_ports``). Raises ``OSError`` if there is no such block."""
    start, stop = _static_port_range(count)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(start, stop)
        if _all_free(host, range(base, base + count)):
            return base
    raise OSError(f"found no {count} consecutive free ports on {host}")


def _static_port_range(count: int) -> tuple[int, int]:
    """Where to pick ``count`` listening ports: below the kernel's ephemeral range (or
    above it, when it starts too low)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return (10000, low - count) if low - count > 11000 else (high + 1, 65535 - count)


def _all_free(host: str, ports: Iterable[int]) -> bool:
    """Can every one of ``ports`` be bound on ``host`` now (all at once)?"""
    socks: list[socket.socket] = []
    try:
        for port in ports:
            s = socket.socket()
            socks.append(s)
            s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def ensure_secret(path: str) -> None:
    """Create the cluster secret (owner-only) on first start; keep it afterwards."""
    if os.path.exists(path):
        os.chmod(path, 0o600)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the launching thread dies, even by SIGKILL,
    so a killed launcher leaves no orphan nodes."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


# preexec_fn for any child that must not outlive its launching thread (None off Linux)
DIE_WITH_PARENT = _die_with_parent if platform.system() == "Linux" else None


# ---------------------------------------------------------------- processes


@dataclass
class Node:
    """One node process: its addresses, data, log file and the running process."""

    id: str
    raft: str
    http: str
    data_dir: str
    log_path: str | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    paused: bool = False
    # the last lines the process wrote to stderr (``capture_stderr``), newest last
    last_lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    tee: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    @property
    def http_port(self) -> int:
        return int(self.http.rpartition(":")[2])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """N node processes of one cluster on this machine.

    Addresses: ``addresses`` (id -> (raft, http)) if given, else ``raft_ports`` /
    ``http_ports`` on ``host``, else free ports picked now. ``cluster_address`` (host:port,
    port 0 picks one) is bound by every node with SO_REUSEPORT. ``secret``: "keep" keeps
    an existing ``cluster.secret`` (``rdbsync run``), "fresh" writes a new one.
    ``command_prefix(id)`` is put before a node's argv (``ip netns exec ...``).
    ``log_dir``: each node's output goes to ``<log_dir>/<id>.log``; None inherits ours.
    ``die_with_parent``: a node gets SIGKILL when the thread that started it dies (Linux
    PR_SET_PDEATHSIG), so only set it when one long-lived thread starts every node.
    ``capture_stderr`` (without ``log_dir``): a node's stderr goes through a pipe, copied
    line by line to ours, so ``last_output`` can quote why it exited.
    Not thread-safe: one thread at a time drives it.
    """

    def __init__(
        self,
        base_dir: str,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        raft_ports: Sequence[int] | None = None,
        http_ports: Sequence[int] | None = None,
        addresses: Mapping[str, tuple[str, str]] | None = None,
        cluster_address: str | None = None,
        node_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_dir: str | None = None,
        command_prefix: Callable[[str], list[str]] | None = None,
        secret: str = "fresh",
        python: str = sys.executable,
        cwd: str | None = None,
        die_with_parent: bool = False,
        capture_stderr: bool = False,
    ) -> None:
        self.base_dir = os.path.abspath(base_dir)
        os.makedirs(self.base_dir, exist_ok=True)
        self.secret_file = os.path.join(self.base_dir, "cluster.secret")
        if secret == "keep":
            ensure_secret(self.secret_file)
        else:
            with open(os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        ids = list(addresses) if addresses else [f"n{i + 1}" for i in range(size)]
        if addresses is None:
            picked = iter(free_ports(2 * size, host)) if raft_ports is None or http_ports is None else None
            raft = list(raft_ports) if picked is None and raft_ports is not None else []
            web = list(http_ports) if picked is None and http_ports is not None else []
            if picked is not None:
                raft = [next(picked) for _ in ids]
                web = [next(picked) for _ in ids]
            addresses = {nid: (f"{host}:{raft[i]}", f"{host}:{web[i]}") for i, nid in enumerate(ids)}
        if cluster_address and cluster_address.endswith(":0"):
            chost = cluster_address.rpartition(":")[0]
            cluster_address = f"{chost}:{free_ports(1, chost)[0]}"
        self.cluster_address = cluster_address or None
        self.node_args = list(node_args)
        self.env = dict(os.environ if env is None else env)
        self.log_dir = log_dir
        self.command_prefix = command_prefix
        self.python = python
        self.cwd = cwd
        self.preexec = DIE_WITH_PARENT if die_with_parent else None
        self.capture_stderr = capture_stderr and not log_dir
        if self.capture_stderr and sys.stderr.isatty():
            # through a pipe a node's "auto" log format would turn to JSON; keep what a terminal gets
            self.env.setdefault("RDBSYNC_LOG_FORMAT", "text")
        self.nodes: dict[str, Node] = {
            nid: Node(
                nid,
                r,
                h,
                os.path.join(self.base_dir, nid),
                os.path.join(log_dir, f"{nid}.log") if log_dir else None,
            )
            for nid, (r, h) in addresses.items()
        }

    @property
    def shared_url(self) -> str | None:
        return f"http://{self.cluster_address}" if self.cluster_address else None

    def endpoints(self) -> list[str]:
        """The shared address (if any), then every node's URL."""
        return ([self.shared_url] if self.shared_url else []) + [n.url for n in self.nodes.values()]

    def argv(self, nid: str, peers: Iterable[Node] | None = None) -> list[str]:
        """The command line of node ``nid``; ``peers`` defaults to every other node."""
        node = self.nodes[nid]
        others = list(peers) if peers is not None else [n for n in self.nodes.values() if n.id != nid]
        argv = [self.python, "-m", "node", "node", "--id", nid, "--raft", node.raft, "--http", node.http]
        argv += ["--data-dir", node.data_dir, "--secret-file", self.secret_file, *self.node_args, *node.extra_args]
        for p in others:
            argv += ["--peer", f"{p.id}={p.raft}={p.url}"]
        if self.cluster_address:
            argv += ["--cluster-address", self.cluster_address]
        if self.command_prefix is not None:
            argv = self.command_prefix(nid) + argv
        return argv

    def start(self, nid: str | None = None, peers: Iterable[Node] | None = None) -> None:
        """Start (or restart, on the same data directory) one node, or all of them."""
        peer_list = list(peers) if peers is not None else None
        for node in [self.nodes[nid]] if nid else list(self.nodes.values()):
            argv = self.argv(node.id, peer_list)
            out: Any = None
            if node.log_path:
                out = open(node.log_path, "ab")  # the child keeps its own copy
            err: Any = subprocess.STDOUT if out else (subprocess.PIPE if self.capture_stderr else None)
            node.last_lines.clear()
            try:
                node.proc = subprocess.Popen(
                    argv,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, which stops them in order
                    preexec_fn=self.preexec,
                )
            finally:
                if out is not None:
                    out.close()
            node.started_at = time.monotonic()
            node.paused = False
            if err is subprocess.PIPE:
                node.tee = threading.Thread(target=_tee, args=(node.proc, node.last_lines), daemon=True)
                node.tee.start()

    def last_output(self, nid: str, timeout: float = 2.0) -> list[str]:
        """The last lines node ``nid`` wrote to stderr (its log file, or the captured
        pipe once the process has closed it, waiting up to ``timeout``); [] if unknown."""
        node = self.nodes[nid]
        if node.log_path:
            with contextlib.suppress(OSError), open(node.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
                return f.read().decode(errors="replace").splitlines()[-20:]
            return []
        if node.tee is not None:
            node.tee.join(timeout)
        return list(node.last_lines)

    def ready(self, nid: str, timeout: float = 2.0) -> bool:
        try:
            return self.get(nid, "/readyz", timeout=timeout).status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0, nodes: Iterable[str] | None = None) -> None:
        """Wait until every given node answers /readyz 200; ``WaitTimeout`` otherwise."""
        pending = list(nodes or self.nodes)

        def all_ready() -> bool:
            pending[:] = [n for n in pending if not self.ready(n, timeout=min(2.0, timeout))]
            return not pending

        wait_for(all_ready, timeout, f"nodes ready ({', '.join(pending)} not yet)", interval=0.1)

    def get(self, nid: str, path: str, *, timeout: float = 3.0) -> Reply:
        token = self.env.get("RDBSYNC_API_TOKEN")
        return http("GET", self.nodes[nid].url + path, timeout=timeout, headers=_auth(token))

    def status(self, nid: str, timeout: float = 3.0) -> dict[str, Any]:
        """GET /v1/status of one node; ``OSError`` if it does not answer 200."""
        reply = self.get(nid, "/v1/status", timeout=timeout)
        if reply.status != 200:
            raise ConnectionError(f"{nid} /v1/status answered {reply.status}: {reply.body}")
        body: dict[str, Any] = reply.body
        return body

    def leader(self, among: Iterable[str] | None = None, timeout: float = 15.0) -> str:
        """Wait until the given nodes (default: the live, running ones) agree on one
        leader with quorum; return its id."""
        ids = list(among) if among is not None else [n.id for n in self.nodes.values() if n.alive and not n.paused]

        def agreed() -> str | None:
            leaders = set()
            for nid in ids:
                st = self.status(nid, timeout=3.0)
                if not st["quorum"]:
                    return None
                leaders.add(st["leader"])
            return leaders.pop() if len(leaders) == 1 and None not in leaders else None

        return wait_for(agreed, timeout, "an agreed leader")

    def signal(self, nid: str, sig: int) -> None:
        """Send ``sig`` to a node; after SIGKILL, reap it."""
        proc = self.nodes[nid].proc
        if proc is None or proc.poll() is not None:
            raise ProcessLookupError(f"{nid} is not running")
        os.kill(proc.pid, sig)
        if sig == signal.SIGSTOP:
            self.nodes[nid].paused = True
        elif sig in (signal.SIGCONT, signal.SIGKILL):
            self.nodes[nid].paused = False
        if sig == signal.SIGKILL:
            proc.wait(10)

    def kill(self, nid: str) -> None:
        """SIGKILL one node if it runs, and reap it."""
        if self.nodes[nid].alive:
            self.signal(nid, signal.SIGKILL)
        self.nodes[nid].paused = False

    def stop(self, nid: str, timeout: float = 15.0) -> None:
        """Stop one node cleanly (SIGCONT, SIGTERM), SIGKILL after ``timeout``."""
        self._stop([self.nodes[nid]], timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        self._stop(list(self.nodes.values()), timeout)

    def kill_all(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                assert node.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)
                    node.proc.kill()
                node.proc.wait()
            node.paused = False

    def _stop(self, nodes: list[Node], timeout: float) -> None:
        for node in nodes:
            if node.alive:
                assert node.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)
                    node.proc.terminate()
        deadline = time.monotonic() + timeout
        for node in nodes:
            if node.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
            node.paused = False


def _tee(proc: subprocess.Popen[bytes], keep: collections.deque[str]) -> None:
    """Copy ``proc``'s stderr to ours line by line, keeping the last lines (own thread)."""
    assert proc.stderr is not None
    with proc.stderr:
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            keep.append(line.rstrip("\n"))
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(line)
                sys.stderr.flush()


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# ---------------------------------------------------------------- supervision


class Backoff:
    """Restart delays: ``initial`` doubling to ``maximum``; back to ``initial`` once a
    node has run ``reset_after`` seconds before dying. Pure; one per node."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, reset_after: float = 30.0) -> None:
        self.initial, self.maximum, self.reset_after = initial, maximum, reset_after
        self._next = initial

    def delay(self, ran_for: float) -> float:
        """The delay before restarting a node that died after running ``ran_for`` s."""
        if ran_for >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def exit_reason(lines: Sequence[str], limit: int = 300) -> str | None:
    """Why a node exited, from its last stderr lines (pure): the message of the last
    critical or error log record (JSON or text format), else the last non-empty line."""
    picked = None
    for line in lines:
        text = line.strip()
        if not text:
            continue
        level, msg = "", text
        if text.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                doc = json.loads(text)
                level, msg = str(doc.get("level", "")).lower(), str(doc.get("msg", text))
        elif " CRITICAL " in text or " ERROR " in text:
            level = "error"
            msg = text.split(": ", 1)[-1] if ": " in text else text
        if level in ("critical", "error") or picked is None or not picked[0]:
            picked = (level in ("critical", "error"), msg)
    if picked is None:
        return None
    msg = picked[1]
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def exit_line(
    nid: str, code: int, *, data_dir: str, reason: str | None, restart_in: float | None, supervised: bool = True
) -> tuple[bool, str]:
    """The decision on a node that exited with ``code`` and its one report line (pure).

    Returns (restart it?, line). Exit 65 (its data files are unusable) is never
    restarted: it would fail the same way. ``restart_in`` is the backoff delay, None
    when restarts are off (--no-restart, ``supervised`` False). ``reason`` (from ``exit_reason``) is quoted
    for a node that exited by itself, not for one killed by a signal."""
    if code == EXIT_STORAGE_CORRUPT:
        what = f"stopped: its data files are unusable (exit {code})"
    elif code == FAIL_STOP_EXIT:
        what = f"stopped: it could not write to its disk (exit {code})"
    else:
        what = describe_exit(code)
    if reason and code > 0:
        what += f": {reason}"
    if code == EXIT_STORAGE_CORRUPT and not supervised:
        return False, f"node {nid} {what}; --no-restart: leaving it down (remove {data_dir} before starting it again)"
    if code == EXIT_STORAGE_CORRUPT:
        return False, (
            f"node {nid} {what}; not restarting: remove {data_dir} and the launcher rejoins it as a new member "
            "(removed from the cluster, started as a learner that copies the data from the leader, then added)"
        )
    if restart_in is None:
        return False, f"node {nid} {what}; --no-restart: leaving it down"
    return True, f"node {nid} {what}; restarting in {restart_in:g}s"


def _reply_text(reply: Reply | None) -> str:
    if reply is None:
        return "no member answered"
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    if isinstance(error, dict):
        return f"{reply.status} {error.get('code')}: {error.get('message')}"
    return f"HTTP {reply.status}"


def cluster_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a GET /v1/cluster answer the supervisor reports on: the leader and
    its term, and per node reachability and fenced protocols (consumer -> cause)."""
    nodes: dict[str, dict[str, Any]] = {}
    leader, term = None, None
    for n in body.get("nodes") or []:
        fences = {f.get("protocol"): f"{f.get('table')} {f.get('cause')}" for f in n.get("fences") or []}
        nodes[str(n.get("id"))] = {"reachable": bool(n.get("reachable")), "fences": fences}
        if n.get("reachable") and n.get("role") == "leader" and n.get("quorum"):
            leader, term = n.get("id"), n.get("term")
    return {"leader": leader, "term": term, "nodes": nodes}


def view_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """One line per change between two ``cluster_view``s (pure)."""
    lines: list[str] = []
    if old is None or (old["leader"], old["term"]) != (new["leader"], new["term"]):
        if new["leader"] is not None:
            lines.append(f"leader elected: {new['leader']} (term {new['term']})")
        elif old is not None and old["leader"] is not None:
            lines.append("no leader")
    for nid, now in new["nodes"].items():
        before = (old or {}).get("nodes", {}).get(nid)
        if before is not None and before["reachable"] != now["reachable"]:
            lines.append(f"node {nid} {'up' if now['reachable'] else 'down (unreachable)'}")
        if not now["reachable"]:
            continue
        was = before["fences"] if before is not None and before["reachable"] else {}
        fenced = {p: c for p, c in now["fences"].items() if was.get(p) != c}
        lifted = sorted(p for p in was if p not in now["fences"])
        catching_up = sorted(p for p, c in fenced.items() if c.endswith("catching_up"))
        if catching_up and len(catching_up) == len(fenced):
            # a node that (re)starts serves nothing until it has caught up: one line, not one per protocol
            lines.append(f"{nid}: catching up (fenced until it has applied what the leader committed)")
        elif fenced:
            lines.append(f"{nid}: fenced " + ", ".join(f"{p} ({c})" for p, c in sorted(fenced.items())))
        if lifted and not now["fences"]:
            lines.append(f"{nid}: serving (unfenced {', '.join(lifted)})")
        elif lifted:
            lines.append(f"{nid}: unfenced {', '.join(lifted)}")
    return lines


class Supervisor:
    """Keeps a ``LocalCluster`` running: one thread watches the processes (restart with
    ``Backoff`` unless ``restart`` is off), another polls GET /v1/cluster and prints the
    changes. ``run`` returns when ``stop`` is set, after stopping every node."""

    POLL_SECONDS = 0.1

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        restart: bool = True,
        backoff: Callable[[], Backoff] = Backoff,
        out: TextIO | None = None,
    ) -> None:
        self.cluster = cluster
        self.restart = restart
        self.backoff = {nid: backoff() for nid in cluster.nodes}
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._held: set[str] = set()  # exited 65: down until its data directory is removed

    def say(self, line: str) -> None:
        with self._lock:
            print(f"rdbsync: {line}", file=self.out, flush=True)

    def check_processes(self, now: float) -> None:
        """Report nodes that died, schedule and do their restarts (one pass)."""
        for nid, node in self.cluster.nodes.items():
            if node.proc is None:
                continue
            code = node.proc.poll()
            if code is not None and nid not in self._due:
                reason = exit_reason(self.cluster.last_output(nid)) if code > 0 else None
                delay = None
                if self.restart and code != EXIT_STORAGE_CORRUPT:
                    delay = self.backoff[nid].delay(now - node.started_at)
                restart, line = exit_line(
                    nid, code, data_dir=node.data_dir, reason=reason, restart_in=delay, supervised=self.restart
                )
                self.say(line)
                if restart and delay is not None:
                    self._due[nid] = now + delay
                else:
                    node.proc = None
                    if code == EXIT_STORAGE_CORRUPT and self.restart:
                        self._held.add(nid)
        for nid in sorted(self._held):
            if not os.path.exists(self.cluster.nodes[nid].data_dir):
                self._held.discard(nid)
                self.rejoin(nid)
        for nid, due in list(self._due.items()):
            if now >= due:
                del self._due[nid]
                self.cluster.start(nid)
                proc = self.cluster.nodes[nid].proc
                self.say(f"node {nid} restarted (pid {proc.pid if proc else '?'})")

    REJOIN_TIMEOUT = 60.0

    def rejoin(self, nid: str) -> bool:
        """Bring back a node whose data directory was removed, the safe way (runs on the
        supervisor's thread and blocks it for up to REJOIN_TIMEOUT s).

        A voter that lost its data must not simply restart: it has forgotten entries it
        acknowledged and the vote it cast, so its next vote could elect a node that lacks
        a committed entry. It is removed from the cluster first, started as a learner
        (``--join``) that copies the data from the leader without voting, and added back
        (the add returns once it votes). On any failure it is left down, and the line says
        what to do by hand."""
        node = self.cluster.nodes[nid]
        token = self.cluster.env.get("RDBSYNC_API_TOKEN")
        others = [n for n in self.cluster.nodes.values() if n.id != nid and n.alive]
        self.say(f"node {nid}: its data directory is gone; rejoining it as a new member")
        deadline = time.monotonic() + self.REJOIN_TIMEOUT

        def ask(method: str, path: str, body: Any = None) -> Reply | None:
            while time.monotonic() < deadline:
                for other in others:
                    with contextlib.suppress(OSError):
                        reply = http(method, other.url + path, body, timeout=30, headers=_auth(token))
                        if reply.status < 500:
                            return reply
                time.sleep(0.5)
            return None

        removed = ask("DELETE", f"/v1/cluster/members/{nid}")
        if removed is None or removed.status not in (200, 404):
            self.say(f"node {nid}: could not remove it from the cluster ({_reply_text(removed)}); leaving it down")
            return False
        node.extra_args = [*node.extra_args, "--join"]
        try:
            self.cluster.start(nid)
            proc = node.proc
            self.say(f"node {nid} started as a learner (pid {proc.pid if proc else '?'})")
            body = {"id": nid, "raft_address": node.raft, "http_url": node.url}
            added = None
            while time.monotonic() < deadline:
                added = ask("POST", "/v1/cluster/members", body)
                # 422 member_unreachable / 503: the learner is still starting or catching up
                if added is not None and added.status == 200:
                    break
                time.sleep(0.5)
            if added is None or added.status != 200:
                self.say(
                    f"node {nid}: could not add it back ({_reply_text(added)}); it runs as a learner: "
                    f"add it with: rdbsync members add {nid} {node.raft} {node.url}"
                )
                return False
        finally:
            node.extra_args = [a for a in node.extra_args if a != "--join"]  # a voter now: restarts are plain
        self.say(f"node {nid} rejoined the cluster as a voting member")
        return True

    def _watch_cluster(self, stop: threading.Event) -> None:
        view: dict[str, Any] | None = None
        token = self.cluster.env.get("RDBSYNC_API_TOKEN")
        while not stop.wait(0.5):
            live = [n for n in self.cluster.nodes.values() if n.alive]
            body = None
            for node in live:
                with contextlib.suppress(OSError):
                    reply = http("GET", node.url + "/v1/cluster", timeout=3, headers=_auth(token))
                    if reply.status == 200 and isinstance(reply.body, dict):
                        body = reply.body
                        break
            if body is None:
                continue
            new = cluster_view(body)
            for line in view_changes(view, new):
                self.say(line)
            view = new

    def run(self, stop: threading.Event) -> None:
        self.cluster.start()
        for node in self.cluster.nodes.values():
            self.say(f"node {node.id} started (pid {node.proc.pid if node.proc else '?'}): {node.url}")
        watcher = threading.Thread(target=self._watch_cluster, args=(stop,), name="cluster-watch", daemon=True)
        watcher.start()
        try:
            while not stop.wait(self.POLL_SECONDS):
                self.check_processes(time.monotonic())
        finally:
            self.say("stopping all nodes")
            self.cluster.stop_all()
            watcher.join(5)
            self.say("all nodes stopped")


# ---------------------------------------------------------------- rdbsync run


def add_run_arguments(run_p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    run_p.add_argument("--nodes", type=int, default=int(env("RDBSYNC_NODES", "3")))
    run_p.add_argument("--data-dir", default=env("RDBSYNC_DATA_DIR", "data"))
    run_p.add_argument("--host", default="127.0.0.1")
    run_p.add_argument(
        "--raft-port", type=int, default=7001, help="first Raft port (n1); n2 gets +1, ...; 0: pick free"
    )
    run_p.add_argument(
        "--http-port", type=int, default=8001, help="first HTTP port (n1); n2 gets +1, ...; 0: pick free"
    )
    run_p.add_argument(
        "--cluster-address",
        default=env("RDBSYNC_CLUSTER_ADDRESS", "127.0.0.1:8000"),
        help="shared address every node binds (SO_REUSEPORT); port 0 picks one; '' for none",
    )
    run_p.add_argument("--api-token", default=env("RDBSYNC_API_TOKEN"))
    run_p.add_argument("--fault-injection", action="store_true")
    run_p.add_argument("--no-restart", action="store_true", help="leave a node that dies down (failover demos)")
    run_p.add_argument("--restart-backoff", type=float, default=1.0, help="first restart delay, doubling (1 s)")
    run_p.add_argument("--restart-backoff-max", type=float, default=30.0, help="largest restart delay (30 s)")
    run_p.add_argument(
        "--node-arg", action="append", default=[], metavar="ARG", help="extra argument for every node (repeat)"
    )


def run_local_cluster(args: argparse.Namespace) -> int:
    """``rdbsync run``: start, supervise and finally stop a local cluster (main thread)."""
    if args.nodes < 1 or args.nodes % 2 == 0:
        print("rdbsync run: --nodes must be an odd number >= 1", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.api_token:
        env["RDBSYNC_API_TOKEN"] = args.api_token
    node_args = list(args.node_arg) + (["--fault-injection"] if args.fault_injection else [])
    pick = args.raft_port == 0 or args.http_port == 0
    try:
        cluster = LocalCluster(
            args.data_dir,
            args.nodes,
            host=args.host,
            raft_ports=None if pick else [args.raft_port + i for i in range(args.nodes)],
            http_ports=None if pick else [args.http_port + i for i in range(args.nodes)],
            cluster_address=args.cluster_address or None,
            node_args=node_args,
            env=env,
            secret="keep",
            die_with_parent=True,  # the main thread starts and restarts every node
            capture_stderr=True,  # to quote why a node exited
        )
    except OSError as exc:
        print(f"rdbsync run: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"rdbsync: {args.nodes}-node cluster, data in {cluster.base_dir}", flush=True)
    if cluster.shared_url:
        print(f"rdbsync: cluster address (any live node): {cluster.shared_url}", flush=True)
    print(f"rdbsync: try: rdbsync --endpoints {','.join(cluster.endpoints())} status", flush=True)
    print("rdbsync: Ctrl-C stops all nodes.", flush=True)

    def backoff() -> Backoff:
        return Backoff(args.restart_backoff, args.restart_backoff_max)

    Supervisor(cluster, restart=not args.no_restart, backoff=backoff).run(stop)
    return 0
