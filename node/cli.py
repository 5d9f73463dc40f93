"""The ``rdbsync`` command.

    rdbsync node ...   run one node in the foreground (flags or RDBSYNC_* env vars)
    rdbsync run ...    run a local cluster of N nodes on loopback in the foreground

Both stop cleanly on SIGTERM or Ctrl-C: the HTTP sites close, the Raft tick thread
stops and the journal is flushed; ``run`` stops its children and leaves no orphans.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from node._config import NodeConfig, add_node_arguments, parse_node_config, policy_relaxations
from node._exceptions import AppError, ConfigError
from node._http import build_app, make_runner
from node._loading import load_app
from node._logging import log_event, setup_logging
from node._members import REMOVAL
from node._tables import TableRegistry
from node.launcher import add_run_arguments, run_local_cluster
from rdb import ReplicatedStore, StorageCorrupt

log = logging.getLogger("node")

#: Exit status of a node whose data files cannot be used safely (EX_DATAERR): wipe its
#: data directory and start it again to rejoin.
EXIT_STORAGE_CORRUPT = 65


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


#: Container allocations between young collections (CPython's default is 700). A node
#: allocates a few dozen per request; with the default, older generations were collected
#: often enough to show in the tail: write p99 54 -> 27 ms, read p99 35 -> 18 ms side by
#: side at the same throughput (64 connections against a follower).
GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    """Once the node serves (loop thread): what start-up built (modules, the app, the
    state loaded from disk) lives for the whole process, so it is moved out of the
    collector's generations (``gc.freeze``, no collection first: that would scan a big
    state with the GIL held) and never traversed again, and young collections run less
    often. Cycles made later are still collected."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


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
        references=TableRegistry(config.app).references,
        compaction_entries=config.compaction_entries,
        election_timeout=config.election_timeout,
        learner=config.join,
    )
    store.start(loop)
    app = build_app(config, store)
    runner = make_runner(app)
    await runner.setup()
    try:
        host, _, port = config.http_address.rpartition(":")
        await web.TCPSite(runner, host, int(port), reuse_address=True).start()
        if config.cluster_address and not app[REMOVAL].removed:
            shared = web.SockSite(runner, _reuseport_socket(config.cluster_address))
            await shared.start()
            app[REMOVAL].on_removed.append(_leave_address(shared, config.cluster_address))
        _tune_gc()
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rdbsync", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    node_p = sub.add_parser("node", help="run one node")
    add_node_arguments(node_p)
    run_p = sub.add_parser("run", help="run a local cluster on loopback")
    add_run_arguments(run_p)
    run_p.add_argument("--app", default=None, help="the app every node runs, module:attribute [env RDBSYNC_APP]")
    sub.add_parser("chaos", help="run the chaos harness (see rdbsync chaos --help)", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chaos"]:
        from chaos import main as chaos_main  # the harness is a separate tool: import it only when asked

        return chaos_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "run":
        setup_logging("auto")
        if args.app:
            try:
                load_app(args.app)  # refuse a bad app once, before starting any node
            except AppError as exc:
                print(f"rdbsync run: {exc}", file=sys.stderr)
                return 2
            args.node_arg = [*args.node_arg, "--app", args.app]
        return run_local_cluster(args)
    try:
        config = parse_node_config(args)
    except ConfigError as exc:
        print(f"rdbsync node: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.id)
    try:
        asyncio.run(serve_node(config))
    except StorageCorrupt as exc:
        log.critical("node %s refuses to start: %s", config.id, exc)
        return EXIT_STORAGE_CORRUPT
    except OSError as exc:
        log_event(log, logging.ERROR, "node_start_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
