"""The blocking client (httpx). One ``Client`` may be shared by threads (httpx's
connection pool is thread-safe); ``watch`` iterators are not shared."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from rdbsync import _api
from rdbsync._api import Page
from rdbsync._core import WATCH_READ_TIMEOUT, Call, Endpoints, KeyValue, Req, SSEParser, WatchEvent, endpoints_from
from rdbsync._errors import Unavailable, error_from_answer

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


def _body(resp: httpx.Response) -> Any:
    if "json" in resp.headers.get("content-type", ""):
        try:
            return resp.json()
        except ValueError:
            pass
    return resp.text


def _sent(exc: httpx.TransportError) -> bool:
    """False only when the request cannot have reached a server."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


class Client:
    """rdbsync over HTTP with failover between ``endpoints`` (default: ``RDBSYNC_ENDPOINTS``,
    else the local cluster of ``scripts/run``). ``token`` is sent as a bearer token.

    ``timeout`` bounds a whole call, retries included; ``attempt_timeout`` one attempt
    (above the node's request timeout, so its 503 arrives before we give up). Writes
    carry an Idempotency-Key that every retry reuses: applied at most once. Raises the
    ``RdbsyncError`` subclasses of ``rdbsync`` and nothing else.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        attempt_timeout: float = 10.0,
    ) -> None:
        self.endpoints = Endpoints(endpoints_from(endpoints))
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=attempt_timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def request(self, req: Req, *, timeout: float | None = None) -> Any:
        """Run one call with the retry rules of ``rdbsync._core``; the parsed answer body."""
        call = Call(req, self.endpoints, timeout=timeout or self.timeout, attempt_timeout=self.attempt_timeout)
        while True:
            endpoint, budget = call.next_attempt()
            try:
                resp = self._http.request(
                    req.method,
                    endpoint + req.path,
                    params=req.query(),
                    json=req.json,
                    content=req.content,
                    headers=call.headers,
                    timeout=budget,
                )
            except httpx.TransportError as exc:
                call.transport_error(endpoint, exc, sent=_sent(exc))
            else:
                body = _body(resp)
                if call.answer(endpoint, resp.status_code, body):
                    return body if "json" in resp.headers.get("content-type", "") else resp.content
            time.sleep(call.pause())

    # ------------------------------------------------------------ key space

    def get(self, key: str, *, consistency: str | None = None) -> KeyValue:
        """The entry (linearizable unless ``consistency="serializable"``); ``NotFound``."""
        return KeyValue.from_dict(self.request(_api.get(key, consistency)))

    def put(self, key: str, value: Any, *, prev_revision: int | None = None) -> int:
        """Store ``value``; the revision. ``prev_revision``: compare-and-set (0: create only),
        ``Conflict`` with ``details["current"]`` if it differs."""
        return int(self.request(_api.put(key, value, prev_revision))["revision"])

    def delete(self, key: str, *, prev_revision: int | None = None) -> int:
        return int(self.request(_api.delete(key, prev_revision))["revision"])

    def list(
        self,
        prefix: str = "",
        *,
        limit: int | None = None,
        start_after: str | None = None,
        consistency: str | None = None,
    ) -> Page:
        """One page of keys under ``prefix`` (``limit`` default 1000)."""
        return _api.page(self.request(_api.range_(prefix, limit, start_after, consistency)))

    def list_all(self, prefix: str = "", *, consistency: str | None = None) -> Page:
        """Every key under ``prefix``, page by page; ``revision`` is the first page's."""
        first = self.list(prefix, consistency=consistency)
        kvs, current = list(first.kvs), first
        while current.more and current.kvs:
            current = self.list(prefix, start_after=current.kvs[-1].key, consistency=consistency)
            kvs += current.kvs
        return Page(kvs, False, first.revision)

    def txn(
        self,
        compare: Sequence[Mapping[str, Any]] = (),
        success: Sequence[Mapping[str, Any]] = (),
        failure: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """Atomic compare-then-ops: ``{"succeeded", "revision", "responses"}``."""
        result: dict[str, Any] = self.request(_api.txn(compare, success, failure))
        return result

    def watch(
        self,
        prefix: str = "",
        *,
        from_revision: int | None = None,
        stop: threading.Event | None = None,
        give_up_after: float = 60.0,
    ) -> Iterator[WatchEvent]:
        """Changes under ``prefix`` from ``from_revision`` (default: from now), for ever.

        A dropped stream is resumed on any endpoint from the revision after the last event,
        so nothing is missed or repeated. If that history is compacted (410), the prefix
        is listed afresh and a ``reset`` event with the full listing comes first, then the
        changes after it. Ends when ``stop`` is set (checked between events and keepalives);
        ``Unavailable`` after ``give_up_after`` seconds without a stream.
        """
        next_revision = from_revision
        failing_since: float | None = None
        while stop is None or not stop.is_set():
            endpoint = self.endpoints.get()
            try:
                params = _api.watch_params(prefix, next_revision)
                timeout = httpx.Timeout(self.attempt_timeout, read=WATCH_READ_TIMEOUT)
                with self._http.stream("GET", endpoint + "/v1/watch", params=params, timeout=timeout) as resp:
                    if resp.status_code == 410:
                        resp.read()
                        reset = self._relist(prefix)
                        next_revision = reset.revision + 1
                        failing_since = None
                        yield reset
                        continue
                    if resp.status_code != 200:
                        resp.read()
                        raise error_from_answer(resp.status_code, _body(resp), endpoint)
                    if next_revision is None:
                        next_revision = int(resp.headers.get("X-Rdb-Revision", "0")) + 1
                    failing_since = None
                    parser = SSEParser()
                    for line in resp.iter_lines():
                        if stop is not None and stop.is_set():
                            return
                        item = parser.feed(line)
                        if item is None:
                            continue
                        event, _, data = item
                        if event == "compacted":
                            reset = self._relist(prefix)
                            next_revision = reset.revision + 1
                            yield reset
                            break
                        ev = _api.watch_event(event, _json(data))
                        next_revision = ev.revision + 1
                        yield ev
            except (httpx.TransportError, Unavailable) as exc:
                self.endpoints.failed(endpoint)
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > give_up_after:
                    raise Unavailable("unavailable", f"no watch stream for {give_up_after:g}s: {exc}") from None
                time.sleep(0.2)

    def _relist(self, prefix: str) -> WatchEvent:
        """The informer's relist: the whole prefix now, as one ``reset`` event."""
        listing = self.list_all(prefix)
        return WatchEvent("reset", listing.revision, kvs=listing.kvs)

    # ------------------------------------------------------------ management tables

    def tables(self) -> dict[str, Any]:
        """The management tables this cluster has: name -> {schema, key, references}."""
        result: dict[str, Any] = self.request(_api.tables())["tables"]
        return result

    def rows(
        self, table: str, *, limit: int | None = None, start_after: str | None = None, consistency: str | None = None
    ) -> dict[str, Any]:
        """``{"table", "rows": {key: row}, "more", "revision"}``."""
        result: dict[str, Any] = self.request(_api.rows(table, limit, start_after, consistency))
        return result

    def row(self, table: str, key: str, *, consistency: str | None = None) -> dict[str, Any]:
        """``{"table", "key", "row", "mod_revision", ...}``; ``NotFound``."""
        result: dict[str, Any] = self.request(_api.row(table, key, consistency))
        return result

    def put_row(
        self,
        table: str,
        key: str,
        row: Mapping[str, Any],
        *,
        prev_revision: int | None = None,
        wait: str | None = None,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Write a row; ``wait="applied"`` answers once every unfenced node's blade tables
        reflect it (``{"revision", "nodes"}``), ``WaitTimeout`` if one lags past the wait."""
        result: dict[str, Any] = self.request(_api.put_row(table, key, row, prev_revision, wait, wait_timeout))
        return result

    def delete_row(
        self,
        table: str,
        key: str,
        *,
        prev_revision: int | None = None,
        wait: str | None = None,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.request(_api.delete_row(table, key, prev_revision, wait, wait_timeout))
        return result

    def blade_table(self, blade: str, table: str, *, endpoint: str | None = None) -> dict[str, Any]:
        """What one node's blade holds (``endpoint``: that node; default any)."""
        result: dict[str, Any] = self.request(_api.blade_table(blade, table, endpoint))
        return result

    # ------------------------------------------------------------ cluster and operations

    def status(self, *, endpoint: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(_api.status(endpoint))
        return result

    def cluster(self) -> dict[str, Any]:
        """Every member's status (``reachable: false`` for one that does not answer)."""
        result: dict[str, Any] = self.request(_api.cluster())
        return result

    def add_member(self, member_id: str, raft_address: str, http_url: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(_api.add_member(member_id, raft_address, http_url))
        return result

    def remove_member(self, member_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(_api.remove_member(member_id))
        return result

    def resync(self, table: str | None = None, *, dry_run: bool = False, endpoint: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(_api.resync(table, dry_run, endpoint))
        return result

    def events(self, *, endpoint: str | None = None, after_seq: int = 0) -> dict[str, Any]:
        """One node's fence and resync events after ``after_seq``: ``{"node", "events"}``."""
        result: dict[str, Any] = self.request(_api.events(endpoint, after_seq))
        return result

    def snapshot(self, *, progress: Progress | None = None) -> bytes:
        """A linearizable backup of the whole key space (for ``restore``)."""
        deadline = time.monotonic() + self.timeout
        last: Exception | None = None
        for _ in range(3 * len(self.endpoints.urls)):
            endpoint = self.endpoints.get()
            try:
                with self._http.stream("GET", endpoint + "/v1/snapshot") as resp:
                    if resp.status_code != 200:
                        resp.read()
                        err = error_from_answer(resp.status_code, _body(resp), endpoint)
                        if not isinstance(err, Unavailable):
                            raise err
                        raise httpx.TransportError(str(err))
                    total = int(resp.headers["content-length"]) if "content-length" in resp.headers else None
                    chunks, done = [], 0
                    for chunk in resp.iter_bytes():
                        chunks.append(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                    return b"".join(chunks)
            except httpx.TransportError as exc:
                last = exc
                self.endpoints.failed(endpoint)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        raise Unavailable("unavailable", f"no endpoint served a snapshot: {last}")

    def restore(self, data: bytes, *, progress: Progress | None = None) -> dict[str, Any]:
        """Replace the key space with ``data`` (from ``snapshot``) on every node. Retried
        only where it cannot have applied (refused connection, ``applied: false``)."""
        total = len(data)

        def chunks() -> Iterator[bytes]:
            step = 1 << 16
            for i in range(0, total, step):
                yield data[i : i + step]
                if progress:
                    progress(min(total, i + step), total)

        if progress is None:
            result: dict[str, Any] = self.request(_api.restore(data))
            return result
        req = _api.restore(data)
        call = Call(req, self.endpoints, timeout=self.timeout, attempt_timeout=max(self.attempt_timeout, 60))
        while True:
            endpoint, budget = call.next_attempt()
            try:
                resp = self._http.post(
                    endpoint + req.path,
                    content=chunks(),
                    headers={"Content-Length": str(total), "Content-Type": "application/octet-stream"},
                    timeout=budget,
                )
            except httpx.TransportError as exc:
                call.transport_error(endpoint, exc, sent=_sent(exc))
            else:
                body = _body(resp)
                if call.answer(endpoint, resp.status_code, body):
                    out: dict[str, Any] = body
                    return out
            time.sleep(call.pause())


def _json(data: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(data)
    return out
