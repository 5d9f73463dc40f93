"""The local-cluster launcher behind ``rdbsync run`` and ``scripts/run``.

It imports nothing of ours (only the standard library), so the integration tests, the
chaos harness and the benchmarks can use it without loading the node.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any


def add_run_arguments(run_p: argparse.ArgumentParser) -> None:
    run_p.add_argument("--nodes", type=int, default=int(os.environ.get("RDBSYNC_NODES", "3")))
    run_p.add_argument("--data-dir", default=os.environ.get("RDBSYNC_DATA_DIR", "data"))
    run_p.add_argument("--host", default="127.0.0.1")
    run_p.add_argument("--raft-port", type=int, default=7001, help="first Raft port (n1); n2 gets +1, ...")
    run_p.add_argument("--http-port", type=int, default=8001, help="first HTTP port (n1); n2 gets +1, ...")
    run_p.add_argument("--cluster-address", default=os.environ.get("RDBSYNC_CLUSTER_ADDRESS", "127.0.0.1:8000"))
    run_p.add_argument("--api-token", default=os.environ.get("RDBSYNC_API_TOKEN"))
    run_p.add_argument("--fault-injection", action="store_true")


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
