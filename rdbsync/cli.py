"""The ``rdbsync`` command: an operator's CLI on ``rdbsync.Client`` (modelled on etcdctl
and ``consul kv``), plus ``rdbsync node`` / ``run`` / ``chaos``, which start processes and
are handed to ``node.cli`` (imported only then).

Exit codes: 0 ok, 1 not found, 2 usage, 3 conflict (compare-and-set, still referenced),
4 unavailable or timed out (no quorum, fenced, unreachable, outcome unknown), 5 any other
error. Errors print the server's code and message on stderr, never a traceback.

Shell completion (click): ``eval "$(_RDBSYNC_COMPLETE=bash_source rdbsync)"`` (zsh_source,
fish_source for the other shells).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from rdbsync._client import Client
from rdbsync._core import DEFAULT_ENDPOINTS
from rdbsync._errors import NotFound, RdbsyncError

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_CONFLICT, EXIT_UNAVAILABLE, EXIT_ERROR = 0, 1, 2, 3, 4, 5
PROCESS_COMMANDS = ("node", "run", "chaos")


class Ctx:
    def __init__(self, endpoints: str | None, token: str | None, output: str, timeout: float) -> None:
        self.endpoints = endpoints
        self.token = token
        self.output = output
        self.timeout = timeout
        self._client: Client | None = None
        wide = None if sys.stdout.isatty() else 200  # no truncated cells when piped
        self.console = Console(width=wide, soft_wrap=not sys.stdout.isatty())
        self.err = Console(stderr=True)

    @property
    def client(self) -> Client:
        if self._client is None:
            try:
                self._client = Client(self.endpoints, token=self.token, timeout=self.timeout)
            except ValueError as exc:
                raise click.UsageError(f"--endpoints: {exc}") from None
        return self._client

    def emit(self, data: Any, render: Callable[[], Any] | None = None) -> None:
        """JSON with ``-o json`` (or when there is no table form), else ``render()``."""
        if self.output == "json" or render is None:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
            return
        out = render()
        if out is not None:
            self.console.print(out)


pass_ctx = click.make_pass_decorator(Ctx)


def _value(text: str) -> Any:
    """A value on the command line: JSON if it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_arg(text: str, what: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{what} is not JSON: {exc}") from None


def _ts(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--endpoints",
    envvar="RDBSYNC_ENDPOINTS",
    help=f"comma-separated node URLs, tried in order with failover (default: {','.join(DEFAULT_ENDPOINTS)})",
)
@click.option("--token", envvar="RDBSYNC_API_TOKEN", help="bearer token (env RDBSYNC_API_TOKEN)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds per command, retries included")
@click.pass_context
def cli(ctx: click.Context, endpoints: str | None, token: str | None, output: str, timeout: float) -> None:
    """Operate an rdbsync cluster. Exit codes: 0 ok, 1 not found, 2 usage, 3 conflict,
    4 unavailable or timed out, 5 other error.

    Completion: eval "$(_RDBSYNC_COMPLETE=bash_source rdbsync)"
    """
    ctx.obj = Ctx(endpoints, token, output, timeout)
    ctx.call_on_close(lambda: ctx.obj._client.close() if ctx.obj._client else None)


# ---------------------------------------------------------------- processes (node/)


def _process_command(name: str, help_text: str) -> None:
    @cli.command(
        name,
        help=help_text,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    )
    @click.pass_context
    def command(ctx: click.Context) -> None:
        from node.cli import main as node_main  # the node and aiohttp load only for these commands

        ctx.exit(node_main([name, *ctx.args]))


_process_command("node", "Run one node in the foreground (rdbsync node --help).")
_process_command("run", "Run and supervise a local cluster on loopback (rdbsync run --help).")
_process_command("chaos", "Run the chaos harness (rdbsync chaos --help).")


# ---------------------------------------------------------------- kv


@cli.group()
def kv() -> None:
    """Keys and values: get, put, del, ls, watch, txn."""


def _kv_table(kvs: Sequence[dict[str, Any]]) -> Table:
    t = Table("key", "value", "mod_rev", "create_rev", "version")
    for kv in kvs:
        t.add_row(
            kv["key"], _short(kv["value"]), str(kv["mod_revision"]), str(kv["create_revision"]), str(kv["version"])
        )
    return t


@kv.command("get")
@click.argument("key")
@click.option("--serializable", is_flag=True, help="answer from this node, without a read barrier")
@pass_ctx
def kv_get(c: Ctx, key: str, serializable: bool) -> None:
    """Print KEY's value (-o json: the whole entry)."""
    kv_ = c.client.get(key, consistency="serializable" if serializable else None).to_dict()
    c.emit(kv_, lambda: _short(kv_["value"], 10**9))


@kv.command("put")
@click.argument("key")
@click.argument("value")
@click.option("--prev-revision", type=int, help="compare-and-set on mod_revision (0: create only)")
@pass_ctx
def kv_put(c: Ctx, key: str, value: str, prev_revision: int | None) -> None:
    """Store VALUE (JSON if it parses, else a string) under KEY."""
    revision = c.client.put(key, _value(value), prev_revision=prev_revision)
    c.emit({"revision": revision}, lambda: f"OK revision {revision}")


@kv.command("del")
@click.argument("key")
@click.option("--prev-revision", type=int, help="delete only if mod_revision is this")
@pass_ctx
def kv_del(c: Ctx, key: str, prev_revision: int | None) -> None:
    """Delete KEY (exit 1 if it does not exist)."""
    revision = c.client.delete(key, prev_revision=prev_revision)
    c.emit({"revision": revision}, lambda: f"OK revision {revision}")


@kv.command("ls")
@click.argument("prefix", default="")
@click.option("--limit", type=int, help="at most this many keys (default: all)")
@click.option("--serializable", is_flag=True)
@pass_ctx
def kv_ls(c: Ctx, prefix: str, limit: int | None, serializable: bool) -> None:
    """List keys under PREFIX in key order."""
    consistency = "serializable" if serializable else None
    page = c.client.list(prefix, limit=limit, consistency=consistency) if limit else c.client.list_all(prefix)
    kvs = [kv.to_dict() for kv in page.kvs]
    c.emit({"kvs": kvs, "more": page.more, "revision": page.revision}, lambda: _kv_table(kvs))


@kv.command("watch")
@click.argument("prefix", default="")
@click.option("--from-revision", type=int, help="replay from this revision (default: changes from now)")
@click.option("--count", type=int, help="exit after this many events")
@pass_ctx
def kv_watch(c: Ctx, prefix: str, from_revision: int | None, count: int | None) -> None:
    """Print changes under PREFIX as they commit, resuming across node failures; after a
    compaction, lists the prefix afresh (a "reset" line) and goes on."""
    seen = 0
    for ev in c.client.watch(prefix, from_revision=from_revision, give_up_after=c.timeout):
        if c.output == "json":
            click.echo(json.dumps(ev.to_dict(), sort_keys=True))
        elif ev.type == "reset":
            click.echo(f"reset revision={ev.revision} keys={len(ev.kvs)}")
        else:
            value = _short(ev.kv.value, 10**6) if ev.kv and ev.type == "put" else ""
            click.echo(f"{ev.type} {ev.kv.key if ev.kv else '?'} revision={ev.revision} {value}".rstrip())
        seen += 1
        if count is not None and seen >= count:
            return


@kv.command("txn")
@click.argument("body", metavar="JSON|@FILE|-")
@pass_ctx
def kv_txn(c: Ctx, body: str) -> None:
    """Run a transaction: {"compare": [...], "success": [...], "failure": [...]}."""
    doc = _json_arg(body, "the txn")
    if not isinstance(doc, dict):
        raise click.BadParameter("the txn must be a JSON object")
    result = c.client.txn(doc.get("compare", []), doc.get("success", []), doc.get("failure", []))
    c.emit(result, lambda: f"{'SUCCEEDED' if result['succeeded'] else 'FAILED'} revision {result['revision']}")


# ---------------------------------------------------------------- tables


@cli.group()
def tables() -> None:
    """Management tables: ls, schema, get, put, del."""


@tables.command("ls")
@pass_ctx
def tables_ls(c: Ctx) -> None:
    """The management tables this cluster serves."""
    found = c.client.tables()

    def render() -> Table:
        t = Table("table", "key", "references")
        for name, info in sorted(found.items()):
            refs = ", ".join(f"{r['field']} -> {r['table']}" for r in info.get("references", []))
            t.add_row(name, str(info.get("key", "")), refs or "-")
        return t

    c.emit(found, render)


@tables.command("schema")
@click.argument("table")
@pass_ctx
def tables_schema(c: Ctx, table: str) -> None:
    """The JSON schema of TABLE's rows."""
    found = c.client.tables()
    if table not in found:
        raise NotFound("unknown_table", f"no management table {table!r}; tables: {', '.join(sorted(found))}")
    click.echo(json.dumps(found[table]["schema"], indent=2, sort_keys=True))


@tables.command("get")
@click.argument("table")
@click.argument("key", required=False)
@pass_ctx
def tables_get(c: Ctx, table: str, key: str | None) -> None:
    """One row of TABLE, or every row without KEY."""
    if key is not None:
        result = c.client.row(table, key)
        c.emit(result, lambda: json.dumps(result["row"], indent=2, sort_keys=True))
        return
    rows: dict[str, Any] = {}
    start: str | None = None
    while True:
        page = c.client.rows(table, start_after=start)
        rows.update(page["rows"])
        if not page["more"] or not page["rows"]:
            break
        start = list(page["rows"])[-1]
    data = {"table": table, "rows": rows, "revision": page["revision"]}

    def render() -> Table:
        t = Table("key", "row")
        for k, v in rows.items():
            t.add_row(k, _short(v, 150))
        return t

    c.emit(data, render)


def _wait_outcome(result: dict[str, Any]) -> str:
    nodes = result.get("nodes") or {}
    parts = [f"{n} {r.get('outcome')}" for n, r in sorted(nodes.items())]
    return f"OK revision {result['revision']}" + (f" ({', '.join(parts)})" if parts else "")


@tables.command("put")
@click.argument("table")
@click.argument("key")
@click.argument("row", metavar="JSON|@FILE|-")
@click.option("--prev-revision", type=int)
@click.option("--wait", type=click.Choice(["applied"]), help="answer once every unfenced node applied it")
@click.option("--wait-timeout", type=float, default=5.0, show_default=True)
@pass_ctx
def tables_put(
    c: Ctx, table: str, key: str, row: str, prev_revision: int | None, wait: str | None, wait_timeout: float
) -> None:
    """Write ROW (a JSON object) under KEY in TABLE."""
    doc = _json_arg(row, "the row")
    if not isinstance(doc, dict):
        raise click.BadParameter("the row must be a JSON object")
    result = c.client.put_row(
        table, key, doc, prev_revision=prev_revision, wait=wait, wait_timeout=wait_timeout if wait else None
    )
    c.emit(result, lambda: _wait_outcome(result))


@tables.command("del")
@click.argument("table")
@click.argument("key")
@click.option("--prev-revision", type=int)
@click.option("--wait", type=click.Choice(["applied"]))
@click.option("--wait-timeout", type=float, default=5.0, show_default=True)
@pass_ctx
def tables_del(c: Ctx, table: str, key: str, prev_revision: int | None, wait: str | None, wait_timeout: float) -> None:
    """Delete KEY from TABLE."""
    result = c.client.delete_row(
        table, key, prev_revision=prev_revision, wait=wait, wait_timeout=wait_timeout if wait else None
    )
    c.emit(result, lambda: _wait_outcome(result))


# ---------------------------------------------------------------- cluster


@cli.command("status")
@pass_ctx
def status(c: Ctx) -> None:
    """The ring: one row per node (role, term, commit and applied index, quorum, blade
    tables, fences), then each blade table's state and lag on every node."""
    data = c.client.cluster()
    nodes = sorted(data["nodes"], key=lambda n: str(n.get("id")))

    def render() -> Table:
        ring = Table(
            "node", "pid", "role", "term", "leader", "commit", "applied", "quorum", "tables", "fences", title="ring"
        )
        tables_seen: list[str] = []
        for n in nodes:
            if not n.get("reachable"):
                ring.add_row(
                    str(n.get("id")), "-", "[red]unreachable[/red]", *["-"] * 6, _short(n.get("error", ""), 40)
                )
                continue
            tbl = n.get("tables") or {}
            tables_seen += [t for t in tbl if t not in tables_seen]
            bad = [t for t, s in tbl.items() if s.get("state") != "in_sync"]
            fences = sorted({f"{f['protocol']}({f['table']} {f['cause']})" for f in n.get("fences") or []})
            ring.add_row(
                str(n["id"]),
                str(n.get("pid")),
                str(n.get("role")),
                str(n.get("term")),
                str(n.get("leader")),
                str(n.get("commit_index")),
                str(n.get("applied_index")),
                "yes" if n.get("quorum") else "[red]no[/red]",
                f"{len(tbl) - len(bad)}/{len(tbl)} in sync" + (f" ({', '.join(bad)})" if bad else ""),
                ", ".join(fences) or "-",
            )
        c.console.print(ring)
        live = [n for n in nodes if n.get("reachable")]
        blades = Table("blade table", *[str(n["id"]) for n in live], title="blade tables (state, lag in revisions)")
        for name in tables_seen:
            cells = []
            for n in live:
                st = (n.get("tables") or {}).get(name)
                cells.append("-" if st is None else f"{st.get('state')} {st.get('lag', 0)}")
            blades.add_row(f"{(live[0]['tables'].get(name) or {}).get('blade', '')} {name}".strip(), *cells)
        return blades

    c.emit(data, render)


@cli.command("blades")
@click.argument("table")
@pass_ctx
def blades(c: Ctx, table: str) -> None:
    """What every node's blade holds for blade table TABLE (vservers, vldb, volumes, ...):
    its revision, state and rows, to see config land on each node."""
    out = []
    for n in sorted(c.client.cluster()["nodes"], key=lambda n: str(n.get("id"))):
        st = (n.get("tables") or {}).get(table)
        if not n.get("reachable") or not n.get("http_url"):
            out.append({"node": n.get("id"), "reachable": False})
            continue
        if st is None:
            raise NotFound("unknown_table", f"no blade table {table!r}; tables: {', '.join(n.get('tables') or {})}")
        got = c.client.blade_table(st["blade"], table, endpoint=str(n["http_url"]))
        out.append({"node": n["id"], "reachable": True, **got})

    def render() -> Table:
        t = Table("node", "blade", "state", "revision", "rows")
        for b in out:
            if not b["reachable"]:
                t.add_row(str(b["node"]), "-", "[red]unreachable[/red]", "-", "-")
                continue
            rows = ", ".join(sorted(b["rows"])) or "-"
            t.add_row(str(b["node"]), b["blade"], b["state"], str(b["revision"]), _short(rows, 100))
        return t

    c.emit(out, render)


@cli.group()
def members() -> None:
    """Cluster membership: ls, add, rm (one change at a time)."""


@members.command("ls")
@pass_ctx
def members_ls(c: Ctx) -> None:
    st = c.client.status()
    data = {"leader": st.get("leader"), "members": st.get("members", [])}

    def render() -> Table:
        t = Table("id", "raft address", "http url", "connected", "leader")
        for m in data["members"]:
            t.add_row(
                str(m.get("id")),
                str(m.get("raft_address")),
                str(m.get("http_url") or "-"),
                "yes" if m.get("connected") else "no",
                "*" if m.get("id") == data["leader"] else "",
            )
        return t

    c.emit(data, render)


@members.command("add")
@click.argument("member_id", metavar="ID")
@click.argument("raft_address")
@click.argument("http_url")
@pass_ctx
def members_add(c: Ctx, member_id: str, raft_address: str, http_url: str) -> None:
    """Add a member (start it with --peer for every current member)."""
    result = c.client.add_member(member_id, raft_address, http_url)
    c.emit(result, lambda: f"added {member_id} ({raft_address}, {http_url})")


@members.command("rm")
@click.argument("member_id", metavar="ID")
@pass_ctx
def members_rm(c: Ctx, member_id: str) -> None:
    result = c.client.remove_member(member_id)
    c.emit(result, lambda: f"removed {member_id}")


@cli.command("resync")
@click.option("--table", help="one blade table (default: all)")
@click.option("--dry-run", is_flag=True, help="plan only: show what would change")
@click.option("--node", "node_id", help="the node to resync (default: the first endpoint that answers)")
@pass_ctx
def resync(c: Ctx, table: str | None, dry_run: bool, node_id: str | None) -> None:
    """Resync blade tables from committed state now."""
    endpoint = _node_url(c, node_id) if node_id else None
    result = c.client.resync(table, dry_run=dry_run, endpoint=endpoint)

    def render() -> Table:
        t = Table("table", "kind", "decision", "ok", "revision", "actions", "ms", title="dry run" if dry_run else None)
        for r in result["results"]:
            t.add_row(
                r["table"],
                r["kind"],
                str(r["decision"]),
                "yes" if r["ok"] else "[red]no[/red]",
                str(r["revision"]),
                str(r["actions"]),
                str(r["duration_ms"]),
            )
        return t

    c.emit(result, render)


def _node_url(c: Ctx, node_id: str) -> str:
    for n in c.client.cluster()["nodes"]:
        if n.get("id") == node_id and n.get("http_url"):
            return str(n["http_url"])
    raise NotFound("not_found", f"no member {node_id!r} with a known URL")


@cli.command("fences")
@pass_ctx
def fences(c: Ctx) -> None:
    """Every fence on every node: protocol, table, cause, since when."""
    rows = []
    for n in c.client.cluster()["nodes"]:
        for f in n.get("fences") or []:
            rows.append({"node": n.get("id"), **f})

    def render() -> Table | str:
        if not rows:
            return "no fences"
        t = Table("node", "consumer", "table", "cause", "since", "message")
        for f in rows:
            t.add_row(
                str(f["node"]), f["protocol"], f["table"], f["cause"], _ts(f.get("since")), _short(f["message"], 60)
            )
        return t

    c.emit(rows, render)


def _event_line(e: dict[str, Any]) -> str:
    head = f"{_ts(e.get('at'))} {e.get('node')} {e.get('type')}"
    fence = e.get("fence") or e.get("was")
    if isinstance(fence, dict):
        what = f"{e.get('protocol')} table={fence.get('table')} cause={fence.get('cause')}"
        return f"{head} {what}" + (" (lifted)" if e.get("type") == "unfenced" else "")
    rest = " ".join(f"{k}={_short(v, 60)}" for k, v in sorted(e.items()) if k not in ("seq", "at", "node", "type"))
    return f"{head} {rest}".rstrip()


@cli.command("events")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events (Ctrl-C stops)")
@click.option("--poll", type=float, default=1.0, show_default=True, help="seconds between polls with --follow")
@click.option("--duration", type=float, help="with --follow: stop after this many seconds")
@pass_ctx
def events(c: Ctx, follow: bool, poll: float, duration: float | None) -> None:
    """Resync failures, fences and unfences of every node, oldest first."""
    after: dict[str, int] = {}
    pids: dict[str, Any] = {}
    end = time.monotonic() + duration if duration else None
    first = True
    while True:
        batch = []
        for n in c.client.cluster()["nodes"]:
            url, nid = n.get("http_url"), str(n.get("id"))
            if not n.get("reachable") or not url:
                continue
            if pids.setdefault(nid, n.get("pid")) != n.get("pid"):
                after[nid], pids[nid] = 0, n.get("pid")  # it restarted: its event log starts over
            try:
                got = c.client.events(endpoint=str(url), after_seq=after.get(nid, 0))["events"]
            except RdbsyncError:
                continue  # a node down between the two calls: its events come when it is back
            if got:
                after[nid] = max(e["seq"] for e in got)
            batch += got
        batch.sort(key=lambda e: (e.get("at") or 0, str(e.get("node")), e.get("seq", 0)))
        if c.output == "json" and not follow:
            click.echo(json.dumps(batch, indent=2, sort_keys=True))
        else:
            for e in batch:
                click.echo(json.dumps(e, sort_keys=True) if c.output == "json" else _event_line(e))
            if first and not batch and not follow:
                click.echo("no events")
        first = False
        if not follow or (end is not None and time.monotonic() >= end):
            return
        threading.Event().wait(poll)


@cli.group()
def snapshot() -> None:
    """Backups: save FILE, restore FILE."""


def _progress(c: Ctx, what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=c.err,
        transient=True,
        disable=not c.err.is_terminal,
    )


@snapshot.command("save")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@pass_ctx
def snapshot_save(c: Ctx, file: str) -> None:
    """Download a linearizable snapshot of the whole key space to FILE."""
    with _progress(c, "downloading") as bar:
        task = bar.add_task("snapshot", total=None)
        data = c.client.snapshot(progress=lambda done, total: bar.update(task, completed=done, total=total))
    with open(file, "wb") as f:
        f.write(data)
    c.emit({"file": file, "bytes": len(data)}, lambda: f"saved {len(data)} bytes to {file}")


@snapshot.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@pass_ctx
def snapshot_restore(c: Ctx, file: str) -> None:
    """Replace the key space on every node with FILE (every node resyncs in full)."""
    with open(file, "rb") as f:
        data = f.read()
    with _progress(c, "uploading") as bar:
        task = bar.add_task("restore", total=len(data))
        result = c.client.restore(data, progress=lambda done, total: bar.update(task, completed=done))
    c.emit(result, lambda: f"restored {result.get('restored_keys')} keys at revision {result['revision']}")


# ---------------------------------------------------------------- entry point


def _report(err: RdbsyncError) -> int:
    where = f" (from {err.endpoint})" if err.endpoint else ""
    click.echo(f"rdbsync: error: {err.code}: {err.message}{where}", err=True)
    if err.applied is not None:
        click.echo(f"rdbsync: applied: {str(err.applied).lower()}", err=True)
    return err.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (documented above)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] and args[0] in PROCESS_COMMANDS:
        from node.cli import main as node_main  # keeps `rdbsync node --help` argparse's

        return node_main(args)
    try:
        cli.main(args, prog_name="rdbsync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.Abort:
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else EXIT_ERROR
    except RdbsyncError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a file that cannot be written, a broken pipe
        click.echo(f"rdbsync: error: {exc}", err=True)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
