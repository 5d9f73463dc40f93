"""The protocol every connection starts with (``node._front.KeyFront``): it serves plain
key requests itself and hands anything else, with every byte not yet served, to aiohttp.
A client must not be able to tell: every request here is answered the same (status,
headers but the date, body) with the front on and off, in order, on one connection or
many, pipelined or trickled."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from node import _front
from node._common import STORE
from node._front import parse_plain_head, render_response
from node._http import _Server, make_runner
from rdb import KeyValue
from tests.node_app import app_for

MAX_BODY = 1000


class DictStore:
    """Just enough of a ReplicatedStore to answer key reads and writes from a dict.
    ``gate``, when set, holds every read until it is set."""

    references = ()

    def __init__(self) -> None:
        self.revision = 1
        self.data: dict[str, KeyValue] = {}
        self.gate: asyncio.Event | None = None

    def add_load_listener(self, listener: Any) -> None:
        pass

    def add_change_listener(self, listener: Any) -> None:
        pass

    async def linearizable_barrier(self, timeout: float | None = None) -> None:
        if self.gate is not None:
            await self.gate.wait()

    def get(self, key: str) -> KeyValue | None:
        return self.data.get(key)

    async def put(self, key: str, value: Any, *, prev_revision: int | None = None, request_id: Any = None) -> Any:
        self.revision += 1
        old = self.data.get(key)
        created = old.create_revision if old else self.revision
        self.data[key] = KeyValue(key, value, created, self.revision, (old.version if old else 0) + 1)
        return {"status": "ok", "revision": self.revision}

    async def delete(self, key: str, *, prev_revision: int | None = None, request_id: Any = None) -> Any:
        if self.data.pop(key, None) is None:
            return {"status": "not_found", "revision": self.revision}
        self.revision += 1
        return {"status": "ok", "revision": self.revision}


@contextlib.asynccontextmanager
async def serving(front: bool, **config: Any) -> AsyncIterator[tuple[int, _Server, DictStore]]:
    store = DictStore()
    app = app_for(**config)
    app[STORE] = store  # type: ignore[assignment]
    runner = make_runner(app)
    await runner.setup()
    server = runner.server
    assert isinstance(server, _Server)
    server.front_enabled = front and server.front_enabled  # off when its check failed
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, server, store
    finally:
        await runner.cleanup()


def request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    head = {"Host": "x", **(headers or {})}
    if body and "Transfer-Encoding" not in head and "Content-Length" not in head:
        head["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Answer = tuple[int, tuple[tuple[str, str], ...], bytes]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One answer: (status, its headers sorted but Date, body); interim 100s skipped."""
    while True:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *fields = head.decode().rstrip("\r\n").split("\r\n")
        status = int(status_line.split()[1])
        if status != 100:
            break
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    kept = tuple(sorted((k, v) for k, v in headers.items() if k != "date"))
    return status, kept, body


async def exchange(port: int, chunks: list[bytes], answers: int, pause: float = 0.0) -> list[Answer]:
    """Send ``chunks`` on one connection (``pause`` between them) and read ``answers``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return [await read_answer(reader) for _ in range(answers)]
    finally:
        writer.close()


async def raw_answer(raw: bytes, front: bool) -> list[bytes]:
    """The lines (but Date) of everything a fresh server sends back for ``raw`` until it
    closes; with the front on, the connection must have been handed to aiohttp."""
    async with serving(front=front) as (port, server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        got = await asyncio.wait_for(reader.read(), 10)  # aiohttp may close early
        writer.close()
        assert server.handed_over == int(front)
        return [line for line in got.split(b"\r\n") if not line.startswith(b"Date:")]


# A conversation on one connection: plain requests (the front's) and others, mixed.
CONVERSATION = [
    request("PUT", "/v1/kv/a", body=b'{"value": 1}'),
    request("GET", "/v1/kv/a"),
    request("GET", "/v1/kv/a?consistency=linearizable", {"X-Anything": "yes"}),
    request("GET", "/v1/kv/missing"),
    request("PUT", "/v1/kv/_rdb/x", body=b'{"value": 1}'),  # reserved: 422
    request("PUT", "/v1/kv/b", body=b'{"value": '),  # bad JSON: 400
    request("PUT", "/v1/kv/a%ZZb", body=b'{"value": 1}'),  # bad escape: 400
    request("GET", "/v1/kv/a?consistency=sometimes"),  # 422
    request("PUT", "/v1/kv/c", {"Content-Length": "0"}),  # no body: 400
    request("PUT", "/v1/kv/g", {"Content-Encoding": "gzip"}, gzip.compress(b'{"value": [1, 2]}')),
    request("PUT", "/v1/kv/g", {"Content-Encoding": "br"}, b"xx"),  # 415
    request("GET", "/v1/kv/g?consistency=linearizable", {"Authorization": "Bearer whatever"}),
    request("DELETE", "/v1/kv/a"),
    request("DELETE", "/v1/kv/a"),  # 404
    request("GET", "/healthz"),  # not a key: aiohttp from here on
    request("GET", "/v1/kv/b"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("token", [None, "t"])
async def test_a_conversation_is_answered_the_same_with_the_front_and_without(token: str | None) -> None:
    async with serving(front=False, api_token=token) as (port, server, _):
        without = await exchange(port, CONVERSATION, len(CONVERSATION))
    async with serving(front=True, api_token=token) as (port, server, _):
        with_front = await exchange(port, CONVERSATION, len(CONVERSATION))
        assert (server.handed_over, server.front_served) == (1, len(CONVERSATION) - 2)
    assert with_front == without
    if token:  # only the health check needs no token; the token sent is not the one set
        assert [a[0] for a in with_front] == [401] * 14 + [200, 401]
        return
    assert [a[0] for a in with_front] == [
        200,
        200,
        200,
        404,
        422,
        400,
        400,
        422,
        400,
        200,
        415,
        200,
        200,
        404,
        200,
        404,
    ]


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order_across_the_hand_over() -> None:
    pipelined = [b"".join(CONVERSATION)]
    async with serving(front=False) as (port, _, _):
        without = await exchange(port, pipelined, len(CONVERSATION))
    async with serving(front=True) as (port, server, _):
        with_front = await exchange(port, pipelined, len(CONVERSATION))
        assert server.handed_over == 1
    assert with_front == without


@pytest.mark.asyncio
async def test_a_request_that_arrives_in_pieces_goes_to_aiohttp_and_is_answered() -> None:
    whole = request("PUT", "/v1/kv/a", body=b'{"value": "abc"}')
    pieces = [whole[:10], whole[10:-5], whole[-5:]]
    async with serving(front=True) as (port, server, store):
        [(status, _, _)] = await exchange(port, pieces, 1, pause=0.05)
        assert status == 200 and store.data["a"].value == "abc"
        assert server.handed_over == 1


# Requests the front leaves to aiohttp; answered the same either way.
NOT_PLAIN = [
    request("PUT", "/v1/kv/x", {"Transfer-Encoding": "chunked"}, b'c\r\n{"value": 1}\r\n0\r\n\r\n'),
    request("PUT", "/v1/kv/x", {"Transfer-Encoding": "gzip, chunked"}, b"0\r\n\r\n"),
    request("PUT", "/v1/kv/x", {"Expect": "100-continue"}, b'{"value": 1}'),
    request("PUT", "/v1/kv/x", {"Content-Length": "12", "content-length": "12"}, b'{"value": 1}'),
    request("POST", "/v1/kv/x", body=b"{}"),
    request("HEAD", "/v1/kv/x"),
    request("PUT", "/v1/kv/", body=b'{"value": 1}'),
    request("GET", "/v1/kv/x", {"X-Odd": "caf\u00e9"}),
    b"GET /v1/kv/x HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /v1/kv/x HTTP/1.1\nHost: x\n\n",
    b"GET /v1/kv/x#frag HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
    request("GET", "/v1/kv/x", {"X-Big": "v" * 9000}),
    # Heads aiohttp refuses that the front's own rules would let through:
    b"GET /v1/kv/x HTTP/1.1\r\nX-A: 1\r\n\r\n",  # no Host
    b"GET /v1/kv/x HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",  # Host twice
    request("GET", "/v1/kv/x", {"X-A": "1", "x-a": "2"}),  # any name twice
    request("GET", "/v1/kv/x", {f"X-{i}": "1" for i in range(130)}),  # too many fields
    request("GET", "/v1/kv/x", {"Proxy-Connection": "close"}),  # read as Connection by llhttp
    request("GET", "/v1/kv/x", {"Sec-WebSocket-Key1": "1"}),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("raw", NOT_PLAIN, ids=range(len(NOT_PLAIN)))
async def test_what_is_not_plain_goes_to_aiohttp_and_is_answered_as_before(raw: bytes) -> None:
    close = b"GET /v1/kv/zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert await raw_answer(raw + close, front=True) == await raw_answer(raw + close, front=False)


@pytest.mark.asyncio
async def test_connection_close_is_honoured() -> None:
    async with serving(front=True) as (port, server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET", "/v1/kv/a", {"Connection": "close"}))
        status, headers, _ = await read_answer(reader)
        assert status == 404 and ("connection", "close") in headers
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert (server.handed_over, server.front_served) == (0, 1)


@pytest.mark.asyncio
async def test_bytes_after_a_closing_request_are_answered_as_aiohttp_does() -> None:
    # aiohttp's parser refuses data after "Connection: close" (one 400 for both).
    raw = request("GET", "/v1/kv/a", {"Connection": "close"}) + request("GET", "/v1/kv/b")
    with_front = await raw_answer(raw, front=True)
    assert with_front == await raw_answer(raw, front=False) and b" 400 " in with_front[0]


@pytest.mark.asyncio
async def test_a_partial_head_waits_only_while_it_may_be_plain() -> None:
    async def until(condition: Any) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)

    async with serving(front=True) as (port, server, _):
        _, plain = await asyncio.open_connection("127.0.0.1", port)
        partial = b"GET /v1/kv/a HTTP/1.1\r\nHo"
        plain.write(partial)
        # Once the front holds the bytes, it has decided on them: it waits, keeping them.
        await until(lambda: any(front._buffer == partial for front in server._fronts))
        assert server.handed_over == 0 and [f._buffer for f in server._fronts] == [partial]
        _, other = await asyncio.open_connection("127.0.0.1", port)
        other.write(b"POST /v1/txn HTTP/1.1\r\nHo")
        await until(lambda: server.handed_over)
        assert server.handed_over == 1 and [f._buffer for f in server._fronts] == [partial]
        plain.close()
        other.close()


@pytest.mark.asyncio
async def test_an_idle_connection_is_closed_after_the_keep_alive_time() -> None:
    async with serving(front=True, header_timeout=0.3) as (port, server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        started = loop.time()  # before the answer: the idle time counts from it
        writer.write(request("GET", "/v1/kv/a"))
        assert (await read_answer(reader))[0] == 404
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert 0.3 <= loop.time() - started < 2.0
        writer.close()
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""  # never sent a thing
        silent.close()
        assert server.handed_over == 0


@pytest.mark.asyncio
async def test_a_head_that_trickles_in_gets_the_head_timeout_from_the_connection() -> None:
    # A client that waits, then sends its head a byte at a time, is closed a head
    # timeout after it connected, not a head timeout after its first byte.
    async with serving(front=True, header_timeout=1.0) as (port, server, _):
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.7)
        closed = asyncio.ensure_future(reader.read())
        for byte in request("GET", "/v1/kv/a"):
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(closed, 5) == b""  # closed without an answer
        assert 1.0 <= loop.time() - started < 1.6  # aiohttp would have allowed 1.7 s or more
        writer.close()
        assert server.handed_over == 0


@pytest.mark.asyncio
async def test_the_connection_cap_counts_the_front_connections() -> None:
    async with serving(front=True, max_connections=2) as (port, server, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:
            writer.write(request("GET", "/v1/kv/a"))
            assert (await read_answer(reader))[0] == 404
        [(status, _, body)] = await exchange(port, [request("GET", "/v1/kv/a")], 1)
        assert status == 503 and b"too_many_connections" in body
        assert server.refused == 1
        for _, writer in held:
            writer.close()


@pytest.mark.asyncio
async def test_a_request_in_progress_is_answered_before_shutdown_closes_the_connection() -> None:
    async with contextlib.AsyncExitStack() as stack:
        port, server, store = await stack.enter_async_context(serving(front=True))
        store.data["a"] = KeyValue("a", 1, 1, 1, 1)
        store.gate = asyncio.Event()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET", "/v1/kv/a"))
        for _ in range(500):
            if any(front._busy for front in server._fronts):
                break
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(stack.aclose())
        await asyncio.sleep(0.05)
        assert not closing.done()  # shutdown waits for the request in progress
        store.gate.set()
        status, _, body = await read_answer(reader)
        assert status == 200 and b'"value":1' in body.replace(b" ", b"")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await asyncio.wait_for(closing, 10)
        writer.close()


@pytest.mark.asyncio
async def test_a_request_still_in_progress_when_shutdown_times_out_is_cancelled() -> None:
    async with contextlib.AsyncExitStack() as stack:
        port, server, store = await stack.enter_async_context(serving(front=True))
        store.gate = asyncio.Event()  # never set
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET", "/v1/kv/a"))
        busy = None
        for _ in range(500):
            busy = next((front._busy for front in server._fronts if front._busy), None)
            if busy is not None:
                break
            await asyncio.sleep(0.01)
        assert busy is not None
        await asyncio.wait_for(stack.aclose(), 10)  # the runner's shutdown timeout is 2 s
        assert busy.cancelled()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
        writer.close()


@pytest.mark.asyncio
async def test_a_client_pipelining_more_than_the_buffer_is_paused_then_served(monkeypatch: Any) -> None:
    monkeypatch.setattr(_front, "MAX_BUFFERED", 4096)
    many = [request("GET", f"/v1/kv/k{i}") for i in range(10000)]  # ~380 KB
    async with serving(front=True) as (port, server, store):
        store.gate = asyncio.Event()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(many))
        [front] = list(server._fronts)
        for _ in range(500):
            if front._paused:
                break
            await asyncio.sleep(0.01)
        # Reading stops once past the cap: the buffer holds at most one more read (asyncio
        # reads up to 256 KiB at a time), the rest waits in the sockets.
        assert front._paused and len(front._buffer) <= 4096 + 256 * 1024
        store.gate.set()
        got = [await read_answer(reader) for _ in many]
        assert [a[0] for a in got] == [404] * len(many) and front.served == len(many)
        writer.close()


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_its_answers_is_not_served_more(monkeypatch: Any) -> None:
    monkeypatch.setattr(_front, "MAX_BUFFERED", 4096)
    many = [request("GET", f"/v1/kv/k{i}") for i in range(10000)]
    async with serving(front=True) as (port, server, _):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=client)
        writer.write(b"".join(many))
        front = None
        for _ in range(500):
            if server._fronts:
                [front] = list(server._fronts)
                assert front.transport is not None
                front.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                if front._writing_paused and front._paused:
                    break
            await asyncio.sleep(0.01)
        assert front is not None and front._writing_paused and front._paused
        assert front.transport is not None and front.transport.get_write_buffer_size() <= 64 * 1024 + 1024
        served = front.served
        await asyncio.sleep(0.1)
        assert front.served == served  # nothing more is taken while the answers wait
        got = [await read_answer(reader) for _ in many]
        assert [a[0] for a in got] == [404] * len(many) and front.served == len(many)
        writer.close()


@pytest.mark.asyncio
async def test_an_error_in_the_front_itself_is_a_503_and_a_closed_connection(monkeypatch: Any) -> None:
    async def broken(self: Any, request: web.Request) -> web.StreamResponse:
        raise RuntimeError("a bug")

    monkeypatch.setattr(_Server, "serve_key_request", broken)
    async with serving(front=True) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET", "/v1/kv/a") + request("GET", "/v1/kv/b"))
        status, headers, body = await read_answer(reader)
        assert status == 503 and b'"internal"' in body and ("connection", "close") in headers
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


# ---------------------------------------------------------------- the pure parts


def head(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[0]


def test_a_plain_head_is_parsed() -> None:
    parsed = parse_plain_head(head(request("PUT", "/v1/kv/a/b?wait=applied", {"X-Request-Id": "r1"}, b"12345")), 10)
    assert parsed is not None
    assert (parsed.method, parsed.target, parsed.body_length, parsed.close) == (
        "PUT",
        "/v1/kv/a/b?wait=applied",
        5,
        False,
    )
    assert parsed.headers["x-request-id"] == "r1" and parsed.headers["HOST"] == "x"
    closing = parse_plain_head(head(request("GET", "/v1/kv/a", {"Connection": "keep-alive, Close"})), 10)
    assert closing is not None and closing.close


@pytest.mark.parametrize(
    "raw",
    [
        *NOT_PLAIN,
        request("PUT", "/v1/kv/x", body=b"x" * 11),  # larger than the body limit
        request("PUT", "/v1/kv/x", {"Content-Length": "+5"}),
        request("PUT", "/v1/kv/x", {"Connection": "Upgrade", "Upgrade": "websocket"}),
        request("GET", "/v1/kv/x", {"X-Ctl": "a\x01b"}),
        b"GET  /v1/kv/x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"get /v1/kv/x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/kvx HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/kv/x HTTP/1.1\r\n: empty-name\r\n\r\n",
    ],
)
def test_what_is_not_plain_is_refused_by_the_parser(raw: bytes) -> None:
    assert parse_plain_head(head(raw), 10) is None


def test_only_a_plain_response_is_rendered() -> None:
    ok = web.Response(body=b"{}", status=201, headers={"Content-Type": "application/json", "X-Rdb-Revision": "3"})
    rendered = render_response(ok, close=True)
    assert rendered is not None
    status_line, _, rest = rendered.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 201 Created" and rest.endswith(b"\r\n\r\n{}")
    assert b"Content-Length: 2\r\n" in rest and b"Connection: close\r\n" in rest and b"X-Rdb-Revision: 3\r\n" in rest
    assert render_response(web.StreamResponse(), close=False) is None
    injected = web.Response(body=b"", headers={"X-A": "1\r\nSet-Cookie: x"})
    assert render_response(injected, close=False) is None
    with_cookie = web.Response(body=b"")
    with_cookie.set_cookie("a", "b")
    assert render_response(with_cookie, close=False) is None


@pytest.mark.asyncio
async def test_a_node_on_an_aiohttp_the_front_does_not_fit_serves_every_request_through_aiohttp(
    monkeypatch: Any, caplog: Any
) -> None:
    def changed(*args: Any) -> Any:
        raise TypeError("RawRequestMessage() takes other arguments")

    monkeypatch.setattr(_front, "RawRequestMessage", changed)
    async with serving(front=True) as (port, server, _):
        assert server.front_enabled is False
        [(status, _, _)] = await exchange(port, [request("GET", "/v1/kv/a")], 1)
        assert status == 404 and server.front_served == 0 and not server._fronts
    assert "the key front fails its check (TypeError: RawRequestMessage() takes other arguments)" in caplog.text


@pytest.mark.asyncio
async def test_the_front_passes_its_check_on_this_aiohttp() -> None:
    async with serving(front=True) as (_, server, _):
        assert _front.front_works(server) is None and server.front_enabled


@pytest.mark.asyncio
async def test_a_plain_head_the_front_cannot_make_a_request_of_goes_to_aiohttp(monkeypatch: Any) -> None:
    async with serving(front=True) as (port, server, store):
        store.data["a"] = KeyValue("a", 1, 1, 1, 1)

        def refused(*args: Any) -> Any:
            raise ValueError("a head this aiohttp's classes refuse")

        monkeypatch.setattr(_front, "RawRequestMessage", refused)  # after the start-up check
        [(status, _, body)] = await exchange(port, [request("GET", "/v1/kv/a")], 1)
        assert status == 200 and b'"value":1' in body.replace(b" ", b"")
        assert server.handed_over == 1
