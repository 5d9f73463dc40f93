"""Shared pieces of the node's HTTP layer: app keys, limits and request helpers.

Threading: asyncio loop. Helpers raise ``ApiError`` for bad input.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import aiohttp
import orjson
from aiohttp import web
from pydantic import BaseModel

from node._config import NodeConfig
from node._exceptions import ApiError
from rdb import MAX_VALUE_BYTES, MAX_VALUE_DEPTH, ReplicatedStore

if TYPE_CHECKING:
    from node._runtime import BladeRuntime

MEMBERS_PREFIX = "_rdb/members/"
RESERVED_PREFIX = "_rdb/"
#: A value's limit is its stored form (``rdb.check_value``); the body only has to carry
#: it. JSON's worst case is \u0000 escapes, 6 bytes per stored byte: 8 MiB carries any
#: value the store takes, so a body is never refused for how its JSON is spelled.
MAX_BODY_BYTES = 8 * MAX_VALUE_BYTES
#: A JSON body nests its value at most this much deeper (a txn op's value: 3).
MAX_BODY_DEPTH = MAX_VALUE_DEPTH + 4
#: Content-Encodings a body may have (aiohttp's own decoding is off: see ``read_body``).
BODY_ENCODINGS = ("identity", "gzip", "deflate")
MAX_LIST_LIMIT = 10_000
WATCH_KEEPALIVE_SECONDS = 10.0

STORE = web.AppKey("store", ReplicatedStore)
CONFIG = web.AppKey("config", NodeConfig)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
RUNTIME: web.AppKey[BladeRuntime] = web.AppKey("runtime")
#: ``observer(request, status, seconds)`` after every request (the metrics; loop thread).
REQUEST_OBSERVER: web.AppKey[Callable[[web.Request, int, float], None]] = web.AppKey("request_observer")


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: storing them would make later answers invalid JSON.
    raise ApiError(400, "bad_json", f"{name} is not valid JSON", applied=False)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to Infinity
        raise ApiError(400, "bad_json", f"the number {text[:40]} is out of range", applied=False)
    return value


_DIGITS = re.compile(r"[0-9]{1,18}")
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"request body is larger than {limit} bytes", applied=False)


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES, timeout_factor: float = 1.0) -> bytes:
    """The request body, decoded (``Content-Encoding`` identity, gzip or deflate) and at
    most ``limit`` bytes both as sent and decoded, read within the node's body timeout
    (times ``timeout_factor``, for the few bodies that may be far larger than a value).

    Raises ``ApiError``: 415 ``unsupported_encoding`` for any other coding (br, zstd,
    xyz...), 413 ``too_large``, 400 ``bad_body`` for a body that does not decode, 408
    ``body_timeout`` (the connection is closed) when the client is too slow to send it.
    aiohttp's own decoding is off (``auto_decompress=False``): it answers codings it
    lacks with its own plain-text 400 and has no limit on the decoded size."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if coding not in BODY_ENCODINGS:
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {coding[:40]!r} is not supported; use {', '.join(BODY_ENCODINGS)}",
            {"supported": list(BODY_ENCODINGS)},
            applied=False,
        )
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    content = request.content
    if content.is_eof() and content.total_bytes <= limit:
        # The whole body arrived with the head (every small request): nothing to wait
        # for, so no timer and no chunk iterator.
        raw = content.read_nowait()
    else:
        raw = await _read_with_timeout(request, limit, timeout_factor)
    if coding == "identity" or not raw:
        return raw
    return _decode(raw, coding, limit)


async def _read_with_timeout(request: web.Request, limit: int, timeout_factor: float) -> bytes:
    chunks, size = [], 0
    timeout = request.app[CONFIG].body_timeout * timeout_factor
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        # The connection closes after this answer (and aiohttp's short lingering read).
        message = f"the request body did not arrive within {timeout:g} s"
        raise ApiError(408, "body_timeout", message, applied=False) from None
    return b"".join(chunks)


def _decode(raw: bytes, coding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    try:
        try:
            decoder = zlib.decompressobj(wbits)
            out = decoder.decompress(raw, limit + 1)
        except zlib.error:
            if coding != "deflate":
                raise
            decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some clients send
            out = decoder.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "bad_body", f"the request body is not valid {coding}: {exc}", applied=False) from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise _too_large(limit)
    if not decoder.eof:
        raise ApiError(400, "bad_body", f"the request body is truncated {coding}", applied=False)
    return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            # Last-wins would silently drop a part of the request ({"success": A, "success": B}).
            raise ApiError(400, "bad_json", f"the JSON object key {key[:80]!r} appears twice", applied=False)
        seen.add(key)
    return dict(pairs)


#: orjson reads an integer beyond 64 bits as a float; ``json`` keeps it an int. Such a
#: float is at least 2**63 in size, and a float that large goes the strict way.
_LARGEST_EXACT = 2.0**63


def _fast_parse(raw: bytes) -> Any:
    """``raw`` parsed by orjson, or ``_SLOW`` when the strict parser must decide: the
    value is returned only where it equals what ``json.loads`` gives and the strict rules
    hold. orjson refuses NaN, Infinity, 1e999, lone surrogates and anything but UTF-8.
    It keeps the last of duplicated keys, so the pairs in the text (its ``:`` less those
    inside strings) must equal the keys parsed; a ``\\u`` escape could spell a colon
    the text does not show, so such bodies go the strict way."""
    if b"\\u" in raw:
        return _SLOW
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _SLOW
    shape = _shape(data, MAX_BODY_DEPTH)
    if shape is None or shape.large_float or shape.keys != raw.count(b":") - shape.colons_in_strings:
        return _SLOW
    return data


_SLOW = object()


class _Shape(NamedTuple):
    keys: int  # of all the objects
    colons_in_strings: int  # keys and values
    large_float: bool  # a float of 2**63 or more in size


def _shape(data: Any, limit: int) -> _Shape | None:
    """What ``parse_json`` checks of parsed JSON, or None if it nests deeper than ``limit``."""
    keys = colons = 0
    large = False
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            colons += item.count(":")
        elif isinstance(item, float):
            large = large or abs(item) >= _LARGEST_EXACT
        elif isinstance(item, (dict, list)):
            if depth + 1 > limit:
                return None
            if isinstance(item, dict):
                keys += len(item)
                colons += sum(k.count(":") for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return _Shape(keys, colons, large)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no out-of-range numbers, no duplicated object keys,
    at most ``MAX_BODY_DEPTH`` deep. Raises ``ApiError`` 400 ``bad_json``.

    Most bodies take orjson's way (``_fast_parse``, several times faster on the write
    path); whatever it cannot vouch for is parsed again by ``json`` with the checks."""
    if not raw:
        raise ApiError(400, "bad_json", "request body is empty; a JSON object is required", applied=False)
    data = _fast_parse(raw)
    return _strict_parse(raw) if data is _SLOW else data


def _strict_parse(raw: bytes) -> Any:
    """``parse_json`` by the standard library, every rule checked on the way."""
    try:
        data = json.loads(
            raw, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_no_duplicate_keys
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}", applied=False) from None
    except RecursionError:
        raise ApiError(400, "bad_json", "body is nested too deeply", applied=False) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}", applied=False) from None
    if _shape(data, MAX_BODY_DEPTH) is None:
        raise ApiError(400, "bad_json", f"body nests more than {MAX_BODY_DEPTH} arrays/objects", applied=False)
    return data


def dump_json(body: Any) -> bytes:
    """``body`` as JSON bytes: orjson's (about ten times faster than ``json.dumps``), or
    the standard library's where orjson refuses (an integer beyond 64 bits, a lone
    surrogate a strict parse let through)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


async def json_body(request: web.Request, model: type[BaseModel] | None = None) -> Any:
    data = parse_json(await read_body(request))
    return data if model is None else model.model_validate(data)


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def path_problem(raw_path: str) -> str | None:
    """Why a raw request path breaks the one rule for keys in paths, or None.

    The rule: a key (any path segment) is the UTF-8 percent-decoding of the path: every
    ``%XX`` is decoded (``%2F`` is ``/``, ``%25`` is ``%``), ``+`` is itself. A ``%`` not
    followed by two hex digits, or escapes that do not decode to UTF-8 (``%FF``), would
    be kept literally by aiohttp and name the same key as their ``%25`` spelling: refused."""
    if "%" not in raw_path:
        return None
    if _BAD_ESCAPE.search(raw_path):
        return "the path has a '%' not followed by two hex digits (write '%25' for a literal '%')"
    try:
        unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        return "the path's %-escapes do not decode to UTF-8"
    return None


def _given_empty(name: str) -> ApiError:
    return ApiError(400, "bad_parameter", f"{name} is given without a value (leave it out for the default)")


def int_param(request: web.Request, name: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    """The integer query parameter ``name``, None when absent. 400 when given empty
    (``?limit=``), 422 when not a number in range."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw == "":
        raise _given_empty(name)
    if not _DIGITS.fullmatch(raw):  # int() would also take "+1", " 1", "1_0" and "٣"
        raise ApiError(422, "bad_parameter", f"{name} must be a non-negative integer, got {raw[:40]!r}")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(422, "bad_parameter", f"{name} must be {bound}")
    return value


def bool_param(request: web.Request, name: str, default: bool = False) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``); anything else is a 422."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw == "":
        raise _given_empty(name)
    value = _BOOLS.get(raw.lower())
    if value is None:
        raise ApiError(422, "bad_parameter", f"{name} must be true or false, got {raw[:40]!r}")
    return value


def last_event_id(request: web.Request) -> int | None:
    """The SSE ``Last-Event-ID`` header as a revision, or None when absent."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw == "":
        return None
    if not _DIGITS.fullmatch(raw):
        raise ApiError(422, "bad_parameter", f"Last-Event-ID must be a revision number, got {raw[:40]!r}")
    return int(raw)


def request_id(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > 128 or not (key.isascii() and key.isprintable()):
        message = "Idempotency-Key must be 1 to 128 printable ASCII characters"
        raise ApiError(422, "bad_idempotency_key", message, applied=False)
    # One key names one request, whatever the call: the state machine compares the
    # request's digest, so the key reused for another call (a DELETE after a PUT of the
    # same path, another path) answers 422 idempotency_key_reused, a retry the first result.
    return f"idem:{key}"


async def consistent_read(request: web.Request) -> dict[str, Any] | None:
    """Linearizable by default: a read barrier first. Serializable: local, with staleness."""
    store = request.app[STORE]
    consistency = request.query.get("consistency", "linearizable")
    if consistency == "linearizable":
        await store.linearizable_barrier()
        return None
    if consistency == "serializable":
        position = store.read_position()
        return {
            "consistency": "serializable",
            "applied_index": position.applied_index,
            "commit_index": position.commit_index,
            "leader_contact_age_seconds": round(store.last_leader_contact_age(), 3),
            "quorum": position.quorum,
        }
    raise ApiError(422, "bad_parameter", "consistency must be linearizable or serializable")


def members_registry(app: web.Application) -> dict[str, dict[str, str]]:
    """raft address -> {id, raft_address, http_url}, from config and the replicated registry."""
    cfg = app[CONFIG]
    out: dict[str, dict[str, str]] = {
        cfg.raft_address: {"id": cfg.id, "raft_address": cfg.raft_address, "http_url": cfg.http_url}
    }
    for peer in cfg.peers:
        out[peer.raft_address] = {"id": peer.id, "raft_address": peer.raft_address, "http_url": peer.http_url}
    kvs, _ = app[STORE].range(MEMBERS_PREFIX, limit=MAX_LIST_LIMIT)
    for kv in kvs:
        if isinstance(kv.value, dict) and isinstance(kv.value.get("raft_address"), str):
            out[kv.value["raft_address"]] = {k: str(v) for k, v in kv.value.items()}
    return out
