"""The node's request dispatch (``node._http._KeyShortcut``): requests under /v1/kv/ skip
the router's scan and the per-request layers of ``Application._handle``. What a client
gets must not change: every request here is answered the same with the shortcut on and
off, and the shortcut serves exactly the key requests it may."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from node._http import _KeyShortcut, _Server, make_runner
from tests.node_app import app_for

# (method, raw path, extra headers, body): each answered before the store is reached.
REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("PUT", "/v1/kv/_rdb/x", {}, b'{"value": 1}'),  # reserved key: 422 from the handler
    ("DELETE", "/v1/kv/_rdb/x", {}, b""),
    ("PUT", "/v1/kv/a%ZZb", {}, b'{"value": 1}'),  # bad escape: 400 from the front middleware
    ("PUT", "/v1/kv/_rdb/x", {"Transfer-Encoding": "gzip, chunked"}, b"0\r\n\r\n"),  # 501: framing
    ("POST", "/v1/kv/x", {}, b"{}"),  # no POST route: 405 with Allow, the application's way
    ("PUT", "/v1/kv/_rdb/x", {"Expect": "100-continue"}, b'{"value": 1}'),  # Expect: the application's way
    ("PUT", "/v1/kv/", {}, b'{"value": 1}'),  # no key: whatever the router says
    ("GET", "/healthz", {}, b""),
    ("GET", "/v1/nothing-here", {}, b""),
]
SHORTCUT = {0, 1, 2, 3}  # indexes of REQUESTS the shortcut serves


@contextlib.asynccontextmanager
async def serving(shortcut: bool, **config: Any) -> AsyncIterator[tuple[str, _Server]]:
    runner = make_runner(app_for(**config))
    await runner.setup()
    server = runner.server
    assert isinstance(server, _Server)
    if not shortcut:
        server.shortcut.resource = None
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        await runner.cleanup()


async def answer(
    base: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, str, str, bytes]:
    """(status, Allow, X-Rdb-Revision, body) of one request sent as raw bytes (a client
    library would fix the odd paths and framings)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = {"Host": host, "Connection": "close", **headers}
    if "Transfer-Encoding" not in headers:
        head["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    raw = await reader.read()
    writer.close()
    while True:
        text, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *fields = text.decode().split("\r\n")
        if status_line.split()[1] != "100":  # the interim answer to Expect: the final one follows
            break
    got = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    payload = raw
    return int(status_line.split()[1]), got.get("allow", ""), got.get("x-rdb-revision", ""), payload


async def answers(base: str, token: str | None = None) -> list[tuple[int, str, str, bytes]]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return [await answer(base, method, path, {**auth, **headers}, body) for method, path, headers, body in REQUESTS]


@pytest.mark.asyncio
@pytest.mark.parametrize("token", [None, "t"])
async def test_answers_are_the_same_with_the_shortcut_and_without(token: str | None) -> None:
    async with serving(shortcut=False, api_token=token) as (base, server):
        plain = await answers(base, token)
        assert server.shortcut.taken == 0
    async with serving(shortcut=True, api_token=token) as (base, server):
        fast = await answers(base, token)
        assert server.shortcut.taken == len(SHORTCUT)
    assert fast == plain
    assert [a[0] for a in fast][:5] == [422, 422, 400, 501, 405] and "PUT" in fast[4][1]


@pytest.mark.asyncio
async def test_a_key_request_without_a_token_is_refused_on_the_shortcut_too() -> None:
    async with serving(shortcut=True, api_token="t") as (base, server):
        assert (await answer(base, "GET", "/v1/kv/a", {}, b""))[0] == 401
        assert server.shortcut.taken == 1


def test_the_shortcut_is_off_when_the_application_has_another_middleware() -> None:
    app = app_for()

    @web.middleware
    async def extra(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(extra)
    assert _KeyShortcut(app).resource is None
    assert _KeyShortcut(app_for()).resource is not None
