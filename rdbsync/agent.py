"""The agent library: a data-plane daemon in its own process holds blade tables of one node.

    from rdbsync.agent import Agent

    agent = Agent("http://127.0.0.1:8001", "edge", ["routes", "listeners"],
                  on_add=add, on_remove=remove, on_modify=modify)
    agent.start()
    ...
    if agent.serving():      # fails closed
        answer from the daemon's own memory

Callbacks run on the agent's thread, one at a time, in revision order: per row
(``on_add(table, key, row)``, ``on_remove(table, key, old)``, ``on_modify(table, key,
old, new)``) or one batch per revision (``on_batch(revision, changes)``, each change a
``Change``). A callback that raises, or runs longer than ``callback_timeout``, is a
failure: the agent stops applying (never skipping a change), reports it to its node (the
node fences the consumers that depend on the agent's tables, on that node) and retries
with a load after a backoff.

A callback that timed out may still finish later, so the rows it was given are unsure:
the agent reports the failure (and does not serve) until that callback has returned,
then loads again and re-applies every unsure row, even one the node did not change
(callbacks must therefore accept an add of a row the daemon may hold and a remove of one
it may not).

A load (at start and on every reconnect) gets the tables at one revision and applies
only the difference from the rows the daemon holds (``rows()``); the number of rows it
had to change is reported as drift. Incremental batches follow in revision order. The
agent never moves back in revision: a load older than what it applied is not applied
(it retries until the node catches up).

``serving()`` is False before the first load, while a callback has failed, while the
node fences a consumer that depends on the agent, and once the node has not been heard
from for longer than ``grace`` seconds.

Uses the standard library only (a daemon embeds it without new dependencies). The wire
protocol it speaks is documented in the README ("Agents").
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Agent", "AgentError", "Change"]

log = logging.getLogger("rdbsync.agent")

Row = dict[str, Any]


class AgentError(Exception):
    """A node answered something the protocol does not allow (a bug, not an outage)."""


@dataclass(frozen=True)
class Change:
    """One row change: ``old`` None for an add, ``new`` None for a remove."""

    table: str
    key: str
    old: Row | None
    new: Row | None


class _CallbackFailed(Exception):
    def __init__(self, change: Change, error: str) -> None:
        super().__init__(error)
        self.change = change
        self.error = error


class _Reload(Exception):
    pass


class Agent:
    """One agent. ``start()`` runs it on a daemon thread; ``stop()`` ends it."""

    def __init__(
        self,
        node_url: str,
        name: str,
        tables: Iterable[str],
        *,
        on_add: Callable[[str, str, Row], None] | None = None,
        on_remove: Callable[[str, str, Row], None] | None = None,
        on_modify: Callable[[str, str, Row, Row], None] | None = None,
        on_batch: Callable[[int, list[Change]], None] | None = None,
        grace: float = 5.0,
        callback_timeout: float = 5.0,
        report_interval: float = 0.25,
        token: str | None = None,
    ) -> None:
        if on_batch is not None and (on_add or on_remove or on_modify):
            raise ValueError("give either on_batch or per-row callbacks, not both")
        self.node_url = node_url.rstrip("/")
        self.name = name
        self.tables = frozenset(tables)
        self._on_add, self._on_remove, self._on_modify, self._on_batch = on_add, on_remove, on_modify, on_batch
        self.grace = grace
        self.callback_timeout = callback_timeout
        self.report_interval = report_interval
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Row]] = {t: {} for t in self.tables}
        self.applied_revision = 0
        self.loaded = False
        #: True from a successful load while its stream lasts: a reconnect must load
        #: (and see the node's fences) again before the daemon serves.
        self.in_sync = False
        self.failure: str | None = None
        self.failures: list[dict[str, Any]] = []
        self.node_fenced: list[dict[str, Any]] = []
        self.last_contact: float | None = None  # time.monotonic() of the last answer from the node
        self.loads = 0
        self.drift = 0  # rows the last load changed, reported once
        self._stop = threading.Event()
        self._report_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"agent-{name}-cb")
        self._stream_conn: http.client.HTTPConnection | None = None
        #: (table, key) -> the row a timed-out callback may have left in the daemon (None:
        #: removed); re-applied by the next load that starts once no such callback runs.
        self._unsure: dict[tuple[str, str], Row | None] = {}
        #: Timed-out callback jobs still running; when one returns, ``_recheck`` asks the
        #: stream for a load.
        self._stuck: set[concurrent.futures.Future[Any]] = set()
        self._recheck = threading.Event()

    # ------------------------------------------------------------ public

    def start(self) -> Agent:
        for target, what in ((self._run, "sync"), (self._report_loop, "report")):
            t = threading.Thread(target=target, name=f"agent-{self.name}-{what}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._report_now.set()
        conn = self._stream_conn
        if conn is not None:
            conn.close()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def serving(self) -> bool:
        """May the daemon answer from what it holds now? Fails closed."""
        with self._lock:
            contact = self.last_contact
            return (
                self.loaded
                and self.in_sync
                and self.failure is None
                and not self._stuck
                and not self.node_fenced
                and contact is not None
                and time.monotonic() - contact <= self.grace
            )

    def why_not_serving(self) -> str | None:
        """A readable reason ``serving()`` is False, or None."""
        with self._lock:
            if not self.loaded:
                return "not loaded yet"
            if self.failure is not None:
                return f"a callback failed: {self.failure}"
            if self._stuck:
                return "a callback that timed out has not returned yet"
            if not self.in_sync:
                return "reconnecting to the node (serving resumes after a load)"
            if self.node_fenced:
                return "the node fences " + ", ".join(f"{f['protocol']} ({f['cause']})" for f in self.node_fenced)
            if self.last_contact is None or time.monotonic() - self.last_contact > self.grace:
                return f"the node has not been heard from for more than {self.grace:g}s"
            return None

    def rows(self, table: str) -> Mapping[str, Row]:
        """The rows the daemon holds (applied through its callbacks) for ``table``."""
        with self._lock:
            return dict(self._rows[table])

    # ------------------------------------------------------------ the sync thread

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            with self._lock:
                self.in_sync = False
            try:
                cursor, epoch = self._load()
                backoff = 0.05
                self._follow(cursor, epoch)
            except _Reload:
                continue
            except _CallbackFailed as exc:
                self._fail(exc)
                self._stop.wait(backoff)
                backoff = min(2.0, backoff * 2)
            except (OSError, http.client.HTTPException, ValueError, AgentError) as exc:
                if not self._stop.is_set():
                    log.info("agent %s: node %s: %s", self.name, self.node_url, exc)
                self._stop.wait(backoff)
                backoff = min(1.0, backoff * 2)
            except AttributeError:
                if not self._stop.is_set():
                    raise
                return  # stop() closed the stream under a read (http.client then fails this way)

    def _load(self) -> tuple[int, int]:
        # A big table takes a while to send on a busy node: a short timeout would turn a
        # slow load into an endless retry of it.
        status, body = self._request("GET", f"/v1/agents/{self.name}/load", timeout=30.0)
        if status != 200:
            raise OSError(f"load answered {status}: {body.get('message') if isinstance(body, dict) else body}")
        revision, tables = body["revision"], body["tables"]
        with self._lock:
            self.node_fenced = list(body.get("fenced") or [])
        if revision < self.applied_revision:
            raise OSError(f"node is at revision {revision}, behind the applied {self.applied_revision}; retrying")
        self._recheck.clear()
        with self._lock:
            # Read before the diff: a stuck callback that returns after this point may
            # undo what this load applies, so its rows stay unsure (and ``_recheck``
            # brings the next load).
            settled = not self._stuck
            unsure = dict(self._unsure)
        changes = self._load_changes(tables, unsure)
        self._apply(revision, changes)
        with self._lock:
            self.loads += 1
            self.drift += len(changes) if self.loaded else 0  # a first load is no drift
            self.loaded = True
            self.in_sync = True
            if settled:
                self._unsure.clear()
                self.failure, self.failures = None, []
        self._report_now.set()
        return body["cursor"], body["epoch"]

    def _load_changes(
        self, tables: Mapping[str, Mapping[str, Row]], unsure: Mapping[tuple[str, str], Row | None]
    ) -> list[Change]:
        """What a load applies: the difference between the node's ``tables`` and the rows
        held, plus every ``unsure`` row the daemon may hold in another state (a change
        from that state, so a remove names the row it removes)."""
        changes: list[Change] = []
        for table in sorted(self.tables):
            want = tables.get(table) or {}
            have = self._rows[table]
            for key in sorted(set(have) - set(want)):
                changes.append(Change(table, key, have[key], None))
            for key, row in sorted(want.items()):
                old = have.get(key)
                if old != row:
                    changes.append(Change(table, key, old, row))
                elif (table, key) in unsure and unsure[(table, key)] != row:
                    changes.append(Change(table, key, unsure[(table, key)], row))
            for (t, key), maybe in sorted(unsure.items()):
                if t == table and key not in want and key not in have and maybe is not None:
                    changes.append(Change(table, key, maybe, None))
        return changes

    def _follow(self, cursor: int, epoch: int) -> None:
        query = urllib.parse.urlencode({"cursor": cursor, "epoch": epoch})
        for event, data in self._sse(f"/v1/agents/{self.name}/stream?{query}"):
            if self._stop.is_set():
                return
            if event == "reload" or self._recheck.is_set():
                raise _Reload()
            if event != "changes":
                continue
            revision = data["revision"]
            with self._lock:
                self.node_fenced = list(data.get("fenced") or [])
            changes = self._net_changes(data["changes"])
            # Changes come from the node's change log in order: always apply them; the
            # revision never moves back (``_apply`` keeps the highest).
            advanced = revision > self.applied_revision or bool(changes)
            self._apply(revision, changes)
            if advanced:
                self._report_now.set()

    def _net_changes(self, wire: list[dict[str, Any]]) -> list[Change]:
        """The changes of one stream batch as the difference from what the daemon holds.

        A batch spans every revision since the last one, so it may name a key more than
        once (added, then removed when its parent moved away): the last row of each key
        wins. Comparing each one with what was held before the batch would drop the
        remove as a no-op and keep the add, and the daemon would serve a row the node no
        longer has."""
        latest: dict[tuple[str, str], Row | None] = {}
        for c in wire:
            latest[(c["table"], c["key"])] = c["row"]
        changes = []
        for (table, key), row in latest.items():
            old = self._rows[table].get(key)
            if old != row:
                changes.append(Change(table, key, old, row))
        return changes

    def _apply(self, revision: int, changes: list[Change]) -> None:
        """Run the callbacks for ``changes`` in order, then move to ``revision``.
        Raises ``_CallbackFailed`` at the first failure (the rest are not applied).

        The callbacks run on one callback thread, handed the whole list at once (a
        handoff per row would cost more than a 100k-row load may take); this thread
        watches how long the current callback has run and gives up on it past
        ``callback_timeout``, after which the stuck thread applies nothing more: the
        rows from its current one on are unsure (``_unsure``) until a load re-applies
        them after it has returned."""
        if changes:
            self._run_callbacks(revision, changes)
        with self._lock:
            self.applied_revision = max(self.applied_revision, revision)

    def _invoke(self, revision: int, ch: Change) -> None:
        if ch.new is None:
            if ch.old is not None and self._on_remove is not None:
                self._on_remove(ch.table, ch.key, ch.old)
        elif ch.old is None:
            if self._on_add is not None:
                self._on_add(ch.table, ch.key, ch.new)
        elif self._on_modify is not None:
            self._on_modify(ch.table, ch.key, ch.old, ch.new)

    def _run_callbacks(self, revision: int, changes: list[Change]) -> None:
        progress = [0, time.monotonic()]  # index of the current change, when it started
        abandoned = threading.Event()

        def job() -> tuple[int, str] | None:
            if self._on_batch is not None:
                try:
                    self._on_batch(revision, list(changes))
                except Exception as exc:  # noqa: BLE001 - any failure of the daemon's callback is reported
                    return 0, f"{type(exc).__name__}: {exc}"
                if not abandoned.is_set():
                    for ch in changes:
                        self._hold(ch)
                return None
            for i, ch in enumerate(changes):
                if abandoned.is_set():
                    return None
                progress[0], progress[1] = i, time.monotonic()
                try:
                    self._invoke(revision, ch)
                except Exception as exc:  # noqa: BLE001 - any failure of the daemon's callback is reported
                    return i, f"{type(exc).__name__}: {exc}"
                if abandoned.is_set():
                    return None
                self._hold(ch)
            return None

        future = self._pool.submit(job)
        while True:
            try:
                failed = future.result(timeout=0.05)
                break
            except concurrent.futures.TimeoutError:
                if time.monotonic() - float(progress[1]) > self.callback_timeout:
                    abandoned.set()
                    # The stuck callback keeps its thread; later callbacks get a fresh one.
                    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"agent-{self.name}-cb")
                    # Read after ``abandoned`` is set: from here on the job starts no
                    # change, so every change it may have started is in this slice.
                    change = changes[int(progress[0])]
                    with self._lock:
                        for ch in changes[int(progress[0]) :]:
                            self._unsure[(ch.table, ch.key)] = ch.new
                        self._stuck.add(future)
                    future.add_done_callback(self._stuck_returned)
                    raise _CallbackFailed(change, f"callback timed out after {self.callback_timeout:g}s") from None
        if failed is not None:
            raise _CallbackFailed(changes[failed[0]], failed[1])

    def _stuck_returned(self, future: concurrent.futures.Future[Any]) -> None:
        """A timed-out callback returned (on its own thread): load again, then serve."""
        with self._lock:
            self._stuck.discard(future)
        self._recheck.set()
        self._report_now.set()

    def _hold(self, ch: Change) -> None:
        with self._lock:
            if ch.new is None:
                self._rows[ch.table].pop(ch.key, None)
            else:
                self._rows[ch.table][ch.key] = ch.new

    def _fail(self, exc: _CallbackFailed) -> None:
        ch = exc.change
        with self._lock:
            self.failure = f"{ch.table}/{ch.key}: {exc.error}"
            self.failures = [{"table": ch.table, "key": ch.key, "error": exc.error}]
        log.warning("agent %s: callback failed on %s/%s: %s", self.name, ch.table, ch.key, exc.error)
        self._report_now.set()

    # ------------------------------------------------------------ reports

    def _report_body(self) -> dict[str, Any]:
        with self._lock:
            state = "failed" if self.failure else ("ok" if self.loaded and self.in_sync else "loading")
            body = {
                "applied_revision": self.applied_revision,
                "state": state,
                "error": self.failure,
                "failures": list(self.failures),
                "drift": self.drift,
            }
            self.drift = 0
            return body

    def _report_loop(self) -> None:
        """The report thread: at once when the sync thread asks (``_report_now``: after a
        load, a batch, a failure), else every ``report_interval`` (the heartbeat). Its own
        kept-alive connection, so reporting never holds up applying the next batch."""
        conn: http.client.HTTPConnection | None = None
        path = f"/v1/agents/{self.name}/report"
        while not self._stop.is_set():
            self._report_now.wait(self.report_interval)
            self._report_now.clear()
            if self._stop.is_set():
                break
            try:
                if conn is None:
                    conn = self._connection(timeout=2.0)
                headers = {**self._headers, "Content-Type": "application/json"}
                conn.request("POST", path, body=json.dumps(self._report_body()).encode(), headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise OSError(f"report answered {resp.status}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                log.debug("agent %s: report failed: %s", self.name, exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------ HTTP

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.node_url)
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.netloc, timeout=timeout)
        return http.client.HTTPConnection(url.netloc, timeout=timeout)

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
        conn = self._connection(timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = dict(self._headers)
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            self._contact()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def _contact(self) -> None:
        with self._lock:
            self.last_contact = time.monotonic()

    def _sse(self, path: str) -> Iterator[tuple[str, Any]]:
        """(event, data) frames; raises OSError when the stream breaks or goes silent
        (the node sends a batch at least every 0.25 s)."""
        conn = self._connection(timeout=max(1.0, min(self.grace, 2.0)))
        self._stream_conn = conn
        try:
            conn.request("GET", path, headers=self._headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"stream answered {resp.status}")
            event, data = "message", ""
            while True:
                line = resp.readline()
                if not line:
                    raise OSError("the node closed the stream")
                text = line.decode().rstrip("\r\n")
                if not text:
                    if data:
                        self._contact()
                        yield event, json.loads(data)
                    event, data = "message", ""
                elif text.startswith("event:"):
                    event = text[6:].strip()
                elif text.startswith("data:"):
                    data += text[5:].strip()
        finally:
            self._stream_conn = None
            conn.close()
