"""The ``rdbsync`` command.

    rdbsync node ...   run one node in the foreground (flags or RDBSYNC_* env vars)
    rdbsync run ...    run a local cluster of N nodes on loopback in the foreground

Both stop cleanly on SIGTERM or Ctrl-C: the HTTP sites close, the Raft tick thread
stops and the journal is flushed; ``run`` stops its children and leaves no orphans.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from node._config import NodeConfig, add_node_arguments, parse_node_config, policy_relaxations
from node._exceptions import ConfigError
from node._http import build_app
from node._logging import log_event, setup_logging
from node._members import REMOVAL
from node._tables import REFERENCES
from rdb import ReplicatedStore

log = logging.getLogger("node")


def _reuseport_socket(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _leave_address(site: web.SockSite, address: str) -> Callable[[], Awaitable[None]]:
    async def leave() -> None:
        await site.stop()  # closes the listening socket: new connections go to the members
        log_event(log, logging.WARNING, "cluster_address_left", cluster_address=address)

    return leave


async def serve_node(config: NodeConfig) -> None:
    """Run one node until SIGTERM/SIGINT. Runs on the asyncio loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    partners = [p.raft_address for p in config.peers]
    store = ReplicatedStore(
        config.raft_address,
        partners,
        config.data_dir,
        password=config.secret,
        request_timeout=config.request_timeout,
        history_limit=config.history_limit,
        references=REFERENCES,
        compaction_entries=config.compaction_entries,
        learner=config.join,
    )
    store.start(loop)
    app = build_app(config, store)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        host, _, port = config.http_address.rpartition(":")
        await web.TCPSite(runner, host, int(port), reuse_address=True).start()
        if config.cluster_address and not app[REMOVAL].removed:
            shared = web.SockSite(runner, _reuseport_socket(config.cluster_address))
            await shared.start()
            app[REMOVAL].on_removed.append(_leave_address(shared, config.cluster_address))
        # Debug only: the line at start-up is node_ready, once the node serves.
        log_event(log, logging.DEBUG, "node_listening", http=config.http_url, raft=config.raft_address)
        for note in policy_relaxations(config.fence_policy):
            log_event(log, logging.WARNING, "fencing_policy_relaxed", note=note)
        await stop.wait()
        log_event(log, logging.INFO, "node_stopping")
    finally:
        await runner.cleanup()
        await loop.run_in_executor(None, store.close)
        log_event(log, logging.INFO, "node_stopped")


# ---------------------------------------------------------------- local cluster


def ensure_secret(path: str) -> None:
    """Create the cluster secret (owner-only) on first start; keep it afterwards."""
    if os.path.exists(path):
        os.chmod(path, 0o600)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def local_cluster_commands(
    *,
    nodes: int,
    base_dir: str,
    host: str,
    raft_base: int,
    http_base: int,
    cluster_address: str | None,
    fault_injection: bool,
    python: str = sys.executable,
) -> list[tuple[str, list[str], str]]:
    """(id, argv, http_url) for each node of a local cluster."""
    ids = [f"n{i + 1}" for i in range(nodes)]
    raft = {nid: f"{host}:{raft_base + i}" for i, nid in enumerate(ids)}
    http = {nid: f"{host}:{http_base + i}" for i, nid in enumerate(ids)}
    secret_file = os.path.join(base_dir, "cluster.secret")
    out = []
    for nid in ids:
        argv = [
            python,
            "-m",
            "node",
            "node",
            "--id",
            nid,
            "--raft",
            raft[nid],
            "--http",
            http[nid],
            "--data-dir",
            os.path.join(base_dir, nid),
            "--secret-file",
            secret_file,
        ]
        for other in ids:
            if other != nid:
                argv += ["--peer", f"{other}={raft[other]}=http://{http[other]}"]
        if cluster_address:
            argv += ["--cluster-address", cluster_address]
        if fault_injection:
            argv.append("--fault-injection")
        out.append((nid, argv, f"http://{http[nid]}"))
    return out


def run_local_cluster(args: argparse.Namespace) -> int:
    if args.nodes < 1 or args.nodes % 2 == 0:
        print("rdbsync run: --nodes must be an odd number >= 1", file=sys.stderr)
        return 2
    base_dir = os.path.abspath(args.data_dir)
    ensure_secret(os.path.join(base_dir, "cluster.secret"))
    commands = local_cluster_commands(
        nodes=args.nodes,
        base_dir=base_dir,
        host=args.host,
        raft_base=args.raft_port,
        http_base=args.http_port,
        cluster_address=args.cluster_address or None,
        fault_injection=args.fault_injection,
    )
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = dict(os.environ)
    if args.api_token:
        env["RDBSYNC_API_TOKEN"] = args.api_token
    for nid, argv, _ in commands:
        procs.append((nid, subprocess.Popen(argv, env=env, start_new_session=True)))
    print(f"rdbsync: {args.nodes}-node cluster, data in {base_dir}", flush=True)
    for nid, _, url in commands:
        print(f"  {nid}: {url}", flush=True)
    if args.cluster_address:
        print(f"  cluster address (any live node): http://{args.cluster_address}", flush=True)
    print("  try: curl -X PUT -d '{\"value\": 1}' " + commands[0][2] + "/v1/kv/hello", flush=True)
    print("Ctrl-C stops all nodes.", flush=True)
    exit_code = 0
    try:
        while not stopping:
            for nid, proc in procs:
                if proc.poll() is not None:
                    print(f"rdbsync: node {nid} exited with {proc.returncode}; stopping the cluster", file=sys.stderr)
                    stopping, exit_code = True, 1
            time.sleep(0.2)
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        print("rdbsync: all nodes stopped", flush=True)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rdbsync", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    node_p = sub.add_parser("node", help="run one node")
    add_node_arguments(node_p)
    run_p = sub.add_parser("run", help="run a local cluster on loopback")
    run_p.add_argument("--nodes", type=int, default=int(os.environ.get("RDBSYNC_NODES", "3")))
    run_p.add_argument("--data-dir", default=os.environ.get("RDBSYNC_DATA_DIR", "data"))
    run_p.add_argument("--host", default="127.0.0.1")
    run_p.add_argument("--raft-port", type=int, default=7001, help="first Raft port (n1); n2 gets +1, ...")
    run_p.add_argument("--http-port", type=int, default=8001, help="first HTTP port (n1); n2 gets +1, ...")
    run_p.add_argument("--cluster-address", default=os.environ.get("RDBSYNC_CLUSTER_ADDRESS", "127.0.0.1:8000"))
    run_p.add_argument("--api-token", default=os.environ.get("RDBSYNC_API_TOKEN"))
    run_p.add_argument("--fault-injection", action="store_true")
    sub.add_parser("chaos", help="run the chaos harness (see rdbsync chaos --help)", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chaos"]:
        from chaos import main as chaos_main  # the harness is a separate tool: import it only when asked

        return chaos_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "run":
        setup_logging("auto")
        return run_local_cluster(args)
    try:
        config = parse_node_config(args)
    except ConfigError as exc:
        print(f"rdbsync node: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.id)
    try:
        asyncio.run(serve_node(config))
    except OSError as exc:
        log_event(log, logging.ERROR, "node_start_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
