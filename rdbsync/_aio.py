"""The asyncio client (httpx.AsyncClient): the same calls and retry rules as ``Client``.
Use it from one event loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from rdbsync import _api
from rdbsync._api import Page
from rdbsync._client import _body, _sent
from rdbsync._core import WATCH_READ_TIMEOUT, Call, Endpoints, KeyValue, Req, SSEParser, WatchEvent, endpoints_from
from rdbsync._errors import Unavailable, error_from_answer


class AsyncClient:
    """See ``Client``: failover between ``endpoints``, an Idempotency-Key on every write
    reused by its retries, typed errors."""

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
        self._http = httpx.AsyncClient(headers=headers, timeout=attempt_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(self, req: Req, *, timeout: float | None = None) -> Any:
        call = Call(req, self.endpoints, timeout=timeout or self.timeout, attempt_timeout=self.attempt_timeout)
        while True:
            endpoint, budget = call.next_attempt()
            try:
                resp = await self._http.request(
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
            await asyncio.sleep(call.pause())

    async def get(self, key: str, *, consistency: str | None = None) -> KeyValue:
        return KeyValue.from_dict(await self.request(_api.get(key, consistency)))

    async def put(self, key: str, value: Any, *, prev_revision: int | None = None) -> int:
        return int((await self.request(_api.put(key, value, prev_revision)))["revision"])

    async def delete(self, key: str, *, prev_revision: int | None = None) -> int:
        return int((await self.request(_api.delete(key, prev_revision)))["revision"])

    async def list(
        self,
        prefix: str = "",
        *,
        limit: int | None = None,
        start_after: str | None = None,
        consistency: str | None = None,
    ) -> Page:
        return _api.page(await self.request(_api.range_(prefix, limit, start_after, consistency)))

    async def list_all(self, prefix: str = "", *, consistency: str | None = None) -> Page:
        first = await self.list(prefix, consistency=consistency)
        kvs, current = list(first.kvs), first
        while current.more and current.kvs:
            current = await self.list(prefix, start_after=current.kvs[-1].key, consistency=consistency)
            kvs += current.kvs
        return Page(kvs, False, first.revision)

    async def txn(
        self,
        compare: Sequence[Mapping[str, Any]] = (),
        success: Sequence[Mapping[str, Any]] = (),
        failure: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.txn(compare, success, failure))
        return result

    async def watch(
        self, prefix: str = "", *, from_revision: int | None = None, give_up_after: float = 60.0
    ) -> AsyncIterator[WatchEvent]:
        """As ``Client.watch``: resumes after a reconnect, lists afresh after a 410."""
        next_revision = from_revision
        failing_since: float | None = None
        while True:
            endpoint = self.endpoints.get()
            try:
                params = _api.watch_params(prefix, next_revision)
                timeout = httpx.Timeout(self.attempt_timeout, read=WATCH_READ_TIMEOUT)
                async with self._http.stream("GET", endpoint + "/v1/watch", params=params, timeout=timeout) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        if resp.status_code != 410:
                            raise error_from_answer(resp.status_code, _body(resp), endpoint)
                        reset = await self._relist(prefix)
                        next_revision, failing_since = reset.revision + 1, None
                        yield reset
                        continue
                    if next_revision is None:
                        next_revision = int(resp.headers.get("X-Rdb-Revision", "0")) + 1
                    failing_since = None
                    parser = SSEParser()
                    async for line in resp.aiter_lines():
                        item = parser.feed(line)
                        if item is None:
                            continue
                        event, _, data = item
                        if event == "compacted":
                            reset = await self._relist(prefix)
                            next_revision = reset.revision + 1
                            yield reset
                            break
                        ev = _api.watch_event(event, json.loads(data))
                        next_revision = ev.revision + 1
                        yield ev
            except (httpx.TransportError, Unavailable) as exc:
                self.endpoints.failed(endpoint)
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > give_up_after:
                    raise Unavailable("unavailable", f"no watch stream for {give_up_after:g}s: {exc}") from None
                await asyncio.sleep(0.2)

    async def _relist(self, prefix: str) -> WatchEvent:
        listing = await self.list_all(prefix)
        return WatchEvent("reset", listing.revision, kvs=listing.kvs)

    async def tables(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.request(_api.tables()))["tables"]
        return result

    async def rows(
        self, table: str, *, limit: int | None = None, start_after: str | None = None, consistency: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.rows(table, limit, start_after, consistency))
        return result

    async def row(self, table: str, key: str, *, consistency: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.row(table, key, consistency))
        return result

    async def put_row(
        self,
        table: str,
        key: str,
        row: Mapping[str, Any],
        *,
        prev_revision: int | None = None,
        wait: str | None = None,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.put_row(table, key, row, prev_revision, wait, wait_timeout))
        return result

    async def delete_row(
        self,
        table: str,
        key: str,
        *,
        prev_revision: int | None = None,
        wait: str | None = None,
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.delete_row(table, key, prev_revision, wait, wait_timeout))
        return result

    async def status(self, *, endpoint: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.status(endpoint))
        return result

    async def cluster(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.cluster())
        return result

    async def add_member(self, member_id: str, raft_address: str, http_url: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.add_member(member_id, raft_address, http_url))
        return result

    async def remove_member(self, member_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.remove_member(member_id))
        return result

    async def resync(
        self, table: str | None = None, *, dry_run: bool = False, endpoint: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.resync(table, dry_run, endpoint))
        return result

    async def events(self, *, endpoint: str | None = None, after_seq: int = 0) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.events(endpoint, after_seq))
        return result

    async def blade_table(self, blade: str, table: str, *, endpoint: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(_api.blade_table(blade, table, endpoint))
        return result

    async def snapshot(self) -> bytes:
        """A linearizable backup of the whole key space (for ``restore``)."""
        data = await self.request(Req("GET", "/v1/snapshot"))
        return bytes(data)

    async def restore(self, data: bytes) -> dict[str, Any]:
        """As ``Client.restore``: retried only where it cannot have applied."""
        result: dict[str, Any] = await self.request(_api.restore(data))
        return result
