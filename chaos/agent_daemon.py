"""A data-plane daemon for the agent tests and the chaos harness: embeds
``rdbsync.agent.Agent`` and answers ``GET /`` with what it would serve (``serving``, the
rows it holds, its applied revision).

    python -m chaos.agent_daemon --node URL --name edge --tables routes --port P
        [--host 127.0.0.1] [--fail-key SUBSTR] [--grace 1.0] [--batch]

With ``--batch`` the daemon applies one batch per revision (``on_batch``) under its own
lock, and ``rows_revision`` is the newest revision its rows are exactly the projection
of (the chaos harness judges answers by it); per-row callbacks may be read between two
rows.

A row whose key contains ``--fail-key`` makes the add/modify callback raise (a daemon
that cannot apply that config)."""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rdbsync import Agent, Change


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--node", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--tables", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to answer on (a chaos node's namespace address)")
    p.add_argument("--fail-key", default=None)
    p.add_argument("--grace", type=float, default=1.0)
    p.add_argument("--batch", action="store_true", help="one callback per revision (on_batch)")
    args = p.parse_args()
    memory: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    rows_revision = [0]  # --batch: the revision the rows in memory are exactly at

    def add(table: str, key: str, row: dict[str, Any]) -> None:
        if args.fail_key and args.fail_key in key:
            raise ValueError(f"cannot apply {table}/{key}")
        with lock:
            memory.setdefault(table, {})[key] = row

    def modify(table: str, key: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        add(table, key, new)

    def remove(table: str, key: str, old: dict[str, Any]) -> None:
        with lock:
            memory.get(table, {}).pop(key, None)

    def batch(revision: int, changes: list[Change]) -> None:
        if args.fail_key and any(args.fail_key in ch.key for ch in changes if ch.new is not None):
            raise ValueError(f"cannot apply revision {revision}")
        with lock:
            for ch in changes:
                if ch.new is None:
                    memory.get(ch.table, {}).pop(ch.key, None)
                else:
                    memory.setdefault(ch.table, {})[ch.key] = ch.new
            rows_revision[0] = revision

    callbacks: dict[str, Any] = (
        {"on_batch": batch} if args.batch else {"on_add": add, "on_modify": modify, "on_remove": remove}
    )
    agent = Agent(args.node, args.name, args.tables.split(","), grace=args.grace, callback_timeout=2.0, **callbacks)
    agent.start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                serving = agent.serving()
                body = {
                    "serving": serving,
                    "why": agent.why_not_serving(),
                    "revision": agent.applied_revision,
                    # The rows are exact at the last batch's revision and at every
                    # revision the agent reached after it without a change (a batch runs
                    # under this lock before the agent moves its revision).
                    "rows_revision": max(rows_revision[0], agent.applied_revision) if args.batch else None,
                    "rows": {t: dict(r) for t, r in memory.items()} if serving else None,
                    "held": {t: dict(agent.rows(t)) for t in agent.tables},
                }
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
