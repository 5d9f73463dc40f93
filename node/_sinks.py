"""File sinks: the node renders blade tables into a file for a daemon it cannot change
(the consul-template case), runs a verify and a reload command, and is the agent of that
daemon to the fencing policy (``agent:NAME``, see ``node/_agents.py``).

Configured per node with ``--sink-config FILE`` (TOML, README "File sinks")::

    [[sink]]
    name = "nginx"                       # the agent name: consumers depending on
    tables = ["routes", "listeners"]     # these tables depend on the sink
    path = "/etc/nginx/conf.d/rdbsync.conf"
    template = "proxy.conf.j2"           # Jinja2 (relative to the config file), or
    # format = "json"
    verify = "nginx -t -c /etc/nginx/nginx.conf"
    reload = "nginx -s reload"
    check = "kill -0 $(cat /run/nginx.pid)"   # optional liveness, every check_interval s
    on_fence = "..."                     # optional: when a dependent consumer is fenced
    on_unfence = "..."                   # ...and when the last such fence is lifted

One render, when the tables reach a new revision and their rendering differs from the
file in force: write a temporary file next to ``path``, fsync it, rename it over
``path`` (fsync the directory), run ``verify``, then ``reload``. A failing (non-zero,
or past ``timeout``) verify or reload puts the previous content back the same way and
is a failed resync: the dependent consumers are fenced on this node; the next commit
(or a retry after a backoff) tries again, and a clean render lifts the fence. A failing
``check`` is a failure too (the daemon died); once it passes again the file is
re-rendered and the daemon reloaded before the fence is lifted.

Commands run through ``/bin/sh -c``, in the config file's directory, with ``RDBSYNC_SINK``, ``RDBSYNC_PATH``,
``RDBSYNC_REVISION`` and (for fence hooks) ``RDBSYNC_FENCED`` in the environment.
Loop thread; the commands run as subprocesses, never blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2

from node._logging import log_event

if TYPE_CHECKING:
    from node._runtime import BladeRuntime

log = logging.getLogger("node.sink")


class SinkConfigError(ValueError):
    """A sink config that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class SinkSpec:
    name: str
    tables: frozenset[str]
    path: str
    template: str | None = None  # file path; None: JSON
    verify: str | None = None
    reload: str | None = None
    check: str | None = None
    check_interval: float = 1.0
    on_fence: str | None = None
    on_unfence: str | None = None
    timeout: float = 10.0
    cwd: str = "."  # commands run here: the config file's directory


def load_sink_config(path: str) -> list[SinkSpec]:
    """Parse a sink config file. Raises ``SinkConfigError``."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SinkConfigError(f"sink config {path}: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    specs = []
    for i, entry in enumerate(doc.get("sink", [])):
        where = f"sink config {path}, sink #{i + 1}"
        if not isinstance(entry, dict):
            raise SinkConfigError(f"{where}: must be a table")
        unknown = sorted(set(entry) - {f for f in SinkSpec.__dataclass_fields__} - {"format"})
        if unknown:
            raise SinkConfigError(f"{where}: unknown setting(s) {unknown}")
        name, tables, target = entry.get("name"), entry.get("tables"), entry.get("path")
        if not isinstance(name, str) or not name or not isinstance(target, str) or not target:
            raise SinkConfigError(f"{where}: needs a name and a path")
        if not isinstance(tables, list) or not tables or not all(isinstance(t, str) for t in tables):
            raise SinkConfigError(f"{where}: tables must be a non-empty list of blade table names")
        fmt = entry.get("format", "template" if "template" in entry else "json")
        template = entry.get("template")
        if fmt == "json" and template is not None:
            raise SinkConfigError(f"{where}: give a template or format = 'json', not both")
        if fmt == "template" and not isinstance(template, str):
            raise SinkConfigError(f"{where}: format 'template' needs a template file")
        if fmt not in ("json", "template"):
            raise SinkConfigError(f"{where}: format must be 'json' or 'template'")
        if template is not None:
            template = os.path.join(base, template)
            if not os.path.isfile(template):
                raise SinkConfigError(f"{where}: template {template} does not exist")
        specs.append(
            SinkSpec(
                name=name,
                tables=frozenset(tables),
                path=os.path.join(base, target),
                template=template,
                verify=entry.get("verify"),
                reload=entry.get("reload"),
                check=entry.get("check"),
                check_interval=float(entry.get("check_interval", 1.0)),
                on_fence=entry.get("on_fence"),
                on_unfence=entry.get("on_unfence"),
                timeout=float(entry.get("timeout", 10.0)),
                cwd=base,
            )
        )
    return specs


class CommandFailed(Exception):
    """A sink command exited non-zero or timed out; ``what`` is verify, reload, check..."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


class FileSink:
    """One sink on this node; ``run`` is its task on the node's loop."""

    def __init__(self, spec: SinkSpec, runtime: BladeRuntime) -> None:
        self.spec = spec
        self.runtime = runtime
        self._template: jinja2.Template | None = None
        if spec.template is not None:
            with open(spec.template) as f:
                env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
                self._template = env.from_string(f.read())
        self.rendered: str | None = None  # the content in force (verified and reloaded)
        self.renders = 0
        self.failed = False
        self.fenced = False
        self._reported: dict[str, Any] | None = None

    def render(self, tables: dict[str, dict[str, Any]]) -> str:
        if self._template is None:
            return json.dumps(tables, sort_keys=True, indent=2) + "\n"
        return self._template.render(tables=tables, node=self.runtime.node_id)

    async def run(self) -> None:
        """The sink's task: never ends on an error (a failed step is logged and retried)."""
        while True:
            try:
                await self._run()
            except Exception as exc:  # noqa: BLE001 - logged; the sink must go on
                log_event(log, logging.ERROR, "sink_failed", exc_info=exc, agent=self.spec.name, error=repr(exc))
                await asyncio.sleep(0.5)

    async def _run(self) -> None:
        hub = self.runtime.agents
        next_check = 0.0
        retry_at = 0.0
        backoff = 0.2
        while True:
            loop = asyncio.get_running_loop()
            if hub.heartbeat(self.spec.name):
                self._reported = None
            await self._fence_hooks()
            if await self.runtime.engine.wait_idle(self.runtime.settle_timeout) and self._tables_ok():
                revision = self.runtime.applied_revision(self.spec.tables)
                tables = {t: dict(self.runtime.tables[t].rows()) for t in sorted(self.spec.tables)}
                try:
                    if self.spec.check and loop.time() >= next_check:
                        next_check = loop.time() + self.spec.check_interval
                        await self._command("check", self.spec.check, revision)
                    content = self.render(tables)
                    due = not self.failed or loop.time() >= retry_at
                    if due and (content != self.rendered or self.failed):
                        await self._install(content, revision)
                    if due:
                        self.failed, backoff = False, 0.2
                        self._report({"state": "ok", "applied_revision": revision})
                except (CommandFailed, jinja2.TemplateError, OSError) as exc:
                    retry_at, backoff = loop.time() + backoff, min(5.0, backoff * 2)
                    self.failed = True
                    if isinstance(exc, CommandFailed) and exc.what == "check":
                        self.rendered = None  # the daemon died: reload it once it is back
                    log_event(log, logging.WARNING, "sink_step_failed", agent=self.spec.name, error=str(exc))
                    self._report({"state": "failed", "applied_revision": revision, "error": str(exc)})
            await hub.wait_tick(0.1)

    def _report(self, body: dict[str, Any]) -> None:
        """Report news only (a report wakes every stream, this task included)."""
        if body != self._reported:
            self._reported = body
            self.runtime.agents.report(self.spec.name, body)

    def _tables_ok(self) -> bool:
        for t in self.spec.tables:
            health = self.runtime.fence_state.tables.get(t)
            if health is not None and not health.ok:
                return False
        return True

    async def _install(self, content: str, revision: int) -> None:
        previous = _read(self.spec.path)
        _write_atomically(self.spec.path, content)
        try:
            if self.spec.verify:
                await self._command("verify", self.spec.verify, revision)
            if self.spec.reload:
                await self._command("reload", self.spec.reload, revision)
        except CommandFailed:
            # The previous file stays in force (the daemon never reloaded the new one).
            if previous is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spec.path)
            else:
                _write_atomically(self.spec.path, previous)
            raise
        self.rendered = content
        self.renders += 1

    async def _command(self, what: str, command: str, revision: int, fenced: str = "") -> None:
        env = dict(
            os.environ,
            RDBSYNC_SINK=self.spec.name,
            RDBSYNC_PATH=self.spec.path,
            RDBSYNC_REVISION=str(revision),
            RDBSYNC_FENCED=fenced,
        )
        proc = await asyncio.create_subprocess_shell(
            command, env=env, cwd=self.spec.cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.spec.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CommandFailed(what, f"{what} command timed out after {self.spec.timeout:g}s: {command}") from None
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-400:]
            raise CommandFailed(what, f"{what} command failed (exit {proc.returncode}): {command}: {tail}")

    async def _fence_hooks(self) -> None:
        hub = self.runtime.agents
        fences = hub.fenced_for(hub.agents[self.spec.name])
        now_fenced = bool(fences)
        if now_fenced == self.fenced:
            return
        self.fenced = now_fenced
        command = self.spec.on_fence if now_fenced else self.spec.on_unfence
        if command:
            names = ",".join(sorted({f["protocol"] for f in fences}))
            try:
                await self._command("on_fence" if now_fenced else "on_unfence", command, 0, names)
            except CommandFailed as exc:
                log_event(log, logging.WARNING, "sink_hook_failed", agent=self.spec.name, error=str(exc))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write_atomically(path: str, content: str) -> None:
    """Temporary file in the same directory, fsync, rename over ``path``, fsync the
    directory: a reader sees the old or the new content, never a mix, even after a crash."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.rdbsync-tmp")
    with open(tmp, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
