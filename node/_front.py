"""The protocol every HTTP connection of a node starts with: it serves plain key requests
itself and hands the connection to aiohttp for anything else.

Why: on the follower taking a benchmark's load, aiohttp's own per-request path (its
protocol's task, parser glue, ``StreamResponse.prepare`` and writer) cost about as much
CPU as everything the node does for a read. A plain key request, the hot path of every
client, needs none of it.

What is *plain* (``parse_plain_head``): a whole ``GET``, ``PUT`` or ``DELETE`` of a path
under ``/v1/kv/``, HTTP/1.1, whose head is strict (visible ASCII, token header names, no
folded lines), with no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, at most one
``Content-Length`` and the whole body already received. Such a request becomes a real
``aiohttp.web.Request`` and goes through the same dispatch as every other key request
(``node._http._KeyShortcut``: the key resource, the front middleware, the handler); only
reading the request and writing the answer are done here. Anything else (another path
or method, an odd framing, a head larger than ``MAX_PLAIN_HEAD``, a body not yet whole)
hands the connection, with every byte not yet served, to aiohttp's own protocol for
good, so that aiohttp's parser and limits judge it exactly as before. A head that comes
in pieces is waited for here first: the time it may take (``header_timeout``, aiohttp's
keep-alive timeout) counts from the connection or the last answer, as before.

Requests on a connection are served one at a time and answered in order, as aiohttp
does; a hand-over happens only between requests, so the two never interleave answers.

Threading: everything here runs on the node's asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, NamedTuple, Protocol

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from node._common import MAX_BODY_BYTES
from node._errors import error_response
from node._exceptions import ApiError

log = logging.getLogger("node.http")

#: A head (request line and header fields) larger than this goes to aiohttp, whose own
#: limits (8190 bytes per line) then apply.
MAX_PLAIN_HEAD = 8192
#: Bytes buffered from a client while its request is being served; past this, reading
#: pauses until the request is answered (a pipelining client cannot fill the memory).
MAX_BUFFERED = 1 << 20

_REQUEST_LINE = re.compile(rb"(GET|PUT|DELETE) (/v1/kv/[!\"$-~]+) HTTP/1\.1")
_HEADER_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[!-~]+(?:[ \t]+[!-~]+)*)?)[ \t]*")
#: Header fields that make a request not plain: the framings, interim answers and
#: upgrades that aiohttp's protocol handles and this one does not (llhttp reads
#: Proxy-Connection as Connection; aiohttp refuses Sec-WebSocket-Key1).
_NOT_PLAIN_FIELDS = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"proxy-connection", b"sec-websocket-key1"})
#: More header fields than aiohttp's parser allows (its max_headers): aiohttp's to refuse.
MAX_PLAIN_FIELDS = 128
_REQUEST_PREFIXES = (b"GET /v1/kv/", b"PUT /v1/kv/", b"DELETE /v1/kv/")


class PlainHead(NamedTuple):
    """A plain request's head, parsed (``parse_plain_head``). A named tuple: made for
    every request, and a frozen dataclass costs several times as much to make."""

    method: str
    target: str  # the request target as sent: path and query
    headers: CIMultiDictProxy[str]
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body_length: int
    close: bool  # the client asked to close after the answer (Connection: close)


def parse_plain_head(head: bytes, max_body: int) -> PlainHead | None:
    """The parsed head when ``head`` (the bytes before the blank line, without it) is a
    plain key request with a body of at most ``max_body`` bytes, else None: a request
    this protocol leaves to aiohttp, whatever aiohttp then answers. Besides its own
    rules, a head aiohttp would refuse is not plain: no Host, a field name given twice
    (aiohttp refuses its singletons twice; a plain request repeats none), more than
    ``MAX_PLAIN_FIELDS`` fields. Pure."""
    if len(head) > MAX_PLAIN_HEAD:
        return None
    lines = head.split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None or len(lines) - 1 > MAX_PLAIN_FIELDS:
        return None
    fields: list[tuple[bytes, bytes]] = []
    names: set[bytes] = set()
    content_length: bytes | None = None
    close = False
    for line in lines[1:]:
        field = _HEADER_FIELD.fullmatch(line)
        if field is None:
            return None  # a folded line, a control or non-ASCII byte, a bad name...
        name, value = field.group(1), field.group(2)
        lowered = name.lower()
        if lowered in _NOT_PLAIN_FIELDS or lowered in names:
            return None
        names.add(lowered)
        if lowered == b"content-length":
            if not value.isdigit() or len(value) > 18:
                return None
            content_length = value
        elif lowered == b"connection":
            options = {option.strip().lower() for option in value.split(b",")}
            if b"upgrade" in options:
                return None
            close = close or b"close" in options
        fields.append((name, value))
    body_length = int(content_length) if content_length is not None else 0
    if body_length > max_body:
        return None
    if b"host" not in names:
        return None
    headers = CIMultiDict([(name.decode("ascii"), value.decode("ascii")) for name, value in fields])
    return PlainHead(
        request_line.group(1).decode("ascii"),
        request_line.group(2).decode("ascii"),
        CIMultiDictProxy(headers),
        tuple(fields),
        body_length,
        close,
    )


def render_response(response: web.StreamResponse, close: bool) -> bytes | None:
    """The bytes of ``response`` as aiohttp would write them for an HTTP/1.1 request
    (status line, its headers plus ``Content-Length``, ``Date``, ``Server`` and, when
    ``close``, ``Connection: close``), or None when it is not a plain ``web.Response``
    with a bytes body (a stream, a compressed or chunked answer, cookies). Pure but for
    the date."""
    # ``_cookies``, not ``cookies``: the property makes an empty cookie jar per answer.
    if type(response) is not web.Response or response.chunked or response.compression or response._cookies:
        return None
    body = response.body
    if body is None:
        body = b""
    if not isinstance(body, bytes):
        return None
    status = response.status
    headers = response.headers
    fields = [f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _SET_HERE]
    text = "".join(fields)
    if text.count("\n") != len(fields) or text.count("\r") != len(fields):
        return None  # a CR or LF inside a name or value would split a header
    reason = response.reason
    if "\r" in reason or "\n" in reason:
        return None
    no_body = status < 200 or status in (204, 304)
    if not no_body:
        if body and "Content-Type" not in headers:  # as aiohttp: only for a body
            text += "Content-Type: application/octet-stream\r\n"
        text += f"Content-Length: {len(body)}\r\n"
    server = headers.get("Server", SERVER_SOFTWARE)
    end = "Connection: close\r\n\r\n" if close else "\r\n"
    head = f"HTTP/1.1 {status} {reason}\r\n{text}Date: {_http_date()}\r\nServer: {server}\r\n{end}"
    return head.encode("utf-8") if no_body else head.encode("utf-8") + body


_SET_HERE = frozenset({"content-length", "connection", "date", "server", "transfer-encoding"})
_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _may_be_plain(partial: bytearray) -> bool:
    """Whether a head not yet whole may still turn out plain: its request line, whole or
    begun, is one a plain request starts with. One that cannot goes to aiohttp at once,
    whose head timeout then starts."""
    line_end = partial.find(b"\r\n")
    if line_end >= 0:
        return _REQUEST_LINE.fullmatch(partial, 0, line_end) is not None
    return any(partial[: len(prefix)] == prefix[: len(partial)] for prefix in _REQUEST_PREFIXES)


def front_works(server: FrontServer) -> str | None:
    """None when this aiohttp takes the front's requests and answers as the front makes
    them (a sample request built through ``server``'s request factory, its body read, an
    answer rendered), else what failed: the front leans on a few of aiohttp's inner
    interfaces, and a node on an aiohttp that changed them must fall back to aiohttp's
    own protocol, not answer every key request with an error. Loop thread."""
    try:
        raw = b"PUT /v1/kv/probe?x=1 HTTP/1.1\r\nHost: probe\r\nContent-Length: 2"
        head = parse_plain_head(raw, MAX_BODY_BYTES)
        if head is None:
            return "the sample head is not plain"
        request = KeyFront(server)._request(head, b"{}")
        if (request.method, request.path, request.query.get("x")) != ("PUT", "/v1/kv/probe", "1"):
            return "the sample request reads back wrong"
        if request.headers.get("host") != "probe" or not request.content.is_eof():
            return "the sample request's head or body reads back wrong"
        if request.content.read_nowait() != b"{}":
            return "the sample request's body reads back wrong"
        answer = web.Response(body=b"{}", headers={"Content-Type": "application/json"})
        rendered = render_response(answer, close=False)
        if rendered is None or not rendered.startswith(b"HTTP/1.1 200 OK\r\n"):
            return "the sample answer is not rendered"
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use the front
        return f"{type(exc).__name__}: {exc}"
    return None


class FrontServer(Protocol):
    """What a ``KeyFront`` needs of the server that made it (``node._http._Server``)."""

    request_factory: Callable[..., web.BaseRequest]

    def serve_key_request(self, request: web.Request) -> Awaitable[web.StreamResponse]: ...
    def aiohttp_protocol(self) -> asyncio.Protocol: ...
    def front_opened(self, front: KeyFront) -> None: ...
    def front_closed(self, front: KeyFront) -> None: ...


class KeyFront(asyncio.Protocol):
    """One client connection while its requests are plain (see the module's docstring).

    ``served`` counts the answers written here (tests read it). The server closes a
    connection idle for its keep-alive time (``close_if_idle``)."""

    def __init__(self, server: FrontServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy: asyncio.Task[None] | None = None  # the request being served
        self._closing = False  # answer what is being served, then close
        self._paused = False  # reading, while a full buffer waits to be served
        self._writing_paused = False  # the transport's buffer is over its high-water mark
        self.handed_over = False
        self.idle_since = self._loop.time()
        self.served = 0
        # For ``web.Request`` (what it reads of aiohttp's RequestHandler):
        self.ssl_context = None
        self.peername: Any = None
        self.sockname: Any = None
        self._reading_paused = False  # a StreamReader's view; bodies arrive whole here

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        tcp_keepalive(transport)  # as aiohttp's protocol does: dead peers are found
        self._server.front_opened(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if self._busy is None:
            self._take()
        self._flow()

    def pause_writing(self) -> None:
        # Called by the transport's write: no further request is taken until the client
        # reads its answers (and past MAX_BUFFERED, nothing more is read from it).
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._busy is None:
            self._take()
        self._flow()

    def eof_received(self) -> bool | None:
        # As aiohttp's protocol: the client is done; the transport closes (an answer in
        # progress is dropped, a partial request is never completed).
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closing = True
        self.transport = None
        self._buffer.clear()
        self._server.front_closed(self)

    # A StreamReader of a body calls these past its high-water mark; the body is
    # already whole in memory, so there is nothing to pause.
    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass

    # ------------------------------------------------------------ server side

    def close(self) -> None:
        """Close after the request being served is answered (now if none is)."""
        self._closing = True
        if self._busy is None and self.transport is not None:
            self.transport.close()

    def close_if_idle(self, since: float) -> None:
        """Close when no request has been in progress since ``since`` (loop time) and no
        complete head has come since: aiohttp's keep-alive and head timeouts, counted
        from the connection or the last answer. Not while the client is not reading its
        answers (aiohttp would wait on it too)."""
        if self._busy is None and not self._writing_paused and self.idle_since <= since:
            self.close()

    async def shutdown(self, timeout: float | None) -> None:
        """Let the request being served finish within ``timeout``, then cancel it (as
        aiohttp's protocol does) and close."""
        self._closing = True
        task = self._busy
        if task is not None:
            await asyncio.wait([task], timeout=timeout)
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1.0)
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ requests

    def _flow(self) -> None:
        """Stop reading while more than MAX_BUFFERED bytes wait to be served; read again
        once they are taken."""
        transport = self.transport
        if transport is None or self._closing:
            return
        wait = len(self._buffer) > MAX_BUFFERED and (self._busy is not None or self._writing_paused)
        if wait != self._paused:
            self._paused = wait
            if wait:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _take(self) -> None:
        """Serve the next request in the buffer when it is plain and whole; hand the
        connection over when it is not; wait when the buffer is empty or the client is
        not reading its answers."""
        buffer = self._buffer
        if not buffer or self._closing or self._writing_paused or self.transport is None:
            return
        end = buffer.find(b"\r\n\r\n", 0, MAX_PLAIN_HEAD + 4)
        if end < 0 and len(buffer) < MAX_PLAIN_HEAD + 4 and _may_be_plain(buffer):
            # The head is still coming: wait here, so that the time it may take counts
            # from the connection or the last answer (close_if_idle), as aiohttp's does.
            return
        head = parse_plain_head(bytes(buffer[:end]), MAX_BODY_BYTES) if end >= 0 else None
        size = end + 4 + head.body_length if head is not None else 0
        # After a request that closes, aiohttp's parser refuses any further byte (400):
        # that request and what follows are aiohttp's to answer.
        if head is None or len(buffer) < size or (head.close and len(buffer) > size):
            self._hand_over()
            return
        try:
            request = self._request(head, buffer[end + 4 : size])
        except Exception:  # a head aiohttp's classes refuse is aiohttp's to answer
            log.exception("a plain head could not be made a request; aiohttp takes the connection")
            self._hand_over()
            return
        del buffer[:size]
        self._busy = self._loop.create_task(self._serve(request, head.close))

    def _request(self, head: PlainHead, body: bytes | bytearray) -> web.Request:
        path, _, query = head.target.partition("?")
        message = RawRequestMessage(
            head.method,
            head.target,
            HttpVersion11,
            head.headers,
            head.raw_headers,
            head.close,
            None,
            False,
            False,
            URL.build(path=path, query_string=query, encoded=True),  # as aiohttp's parser does
        )
        if body:
            payload = StreamReader(self, len(body) + 1, loop=self._loop)  # type: ignore[arg-type]
            payload.feed_data(bytes(body))
            payload.feed_eof()
        else:
            payload = EMPTY_PAYLOAD
        # The application's factory (its body size limit): the attributes a request
        # reads of aiohttp's protocol are on this one; no writer, the answer is
        # rendered here; no task of aiohttp's.
        request = self._server.request_factory(message, payload, self, None, None)
        assert isinstance(request, web.Request)
        return request

    async def _serve(self, request: web.Request, close: bool) -> None:
        try:
            response = await self._server.serve_key_request(request)
            close = close or response.keep_alive is False
            data = render_response(response, close)
            if data is None:
                log.error("a key request's answer cannot be rendered here: %r", response)
        except Exception:  # a bug here must not leave the client hanging
            log.exception("error serving %s %s", request.method, request.path)
            data = None
        if data is None:
            close = True
            data = render_response(error_response(ApiError(503, "internal", "internal error")), close=True)
            assert data is not None
        self._busy = None
        self.idle_since = self._loop.time()
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away, or the server closed: nobody to answer
        self.served += 1
        transport.write(data)
        if close or self._closing:
            self._closing = True
            transport.close()
            return
        self._take()
        self._flow()

    def _hand_over(self) -> None:
        """Give the connection, and every byte not yet served, to aiohttp's protocol."""
        transport = self.transport
        assert transport is not None and self._busy is None
        protocol = self._server.aiohttp_protocol()
        self.handed_over = True
        self._closing = True
        self._server.front_closed(self)
        transport.set_protocol(protocol)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        protocol.connection_made(transport)
        data = bytes(self._buffer)
        self._buffer.clear()
        self.transport = None
        if data:
            protocol.data_received(data)


__all__ = [
    "MAX_PLAIN_HEAD",
    "FrontServer",
    "KeyFront",
    "PlainHead",
    "front_works",
    "parse_plain_head",
    "render_response",
]
