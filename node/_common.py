"""Shared pieces of the node's HTTP layer: app keys, limits and request helpers.

Threading: asyncio loop. Helpers raise ``ApiError`` for bad input.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel

from node._config import NodeConfig
from node._exceptions import ApiError
from rdb import MAX_VALUE_BYTES, ReplicatedStore

if TYPE_CHECKING:
    from node._runtime import BladeRuntime

MEMBERS_PREFIX = "_rdb/members/"
RESERVED_PREFIX = "_rdb/"
MAX_BODY_BYTES = MAX_VALUE_BYTES + 256 * 1024  # JSON overhead around a 1 MiB value
MAX_LIST_LIMIT = 10_000
WATCH_KEEPALIVE_SECONDS = 10.0

STORE = web.AppKey("store", ReplicatedStore)
CONFIG = web.AppKey("config", NodeConfig)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
RUNTIME: web.AppKey[BladeRuntime] = web.AppKey("runtime")


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


async def json_body(request: web.Request, model: type[BaseModel] | None = None) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"request body is larger than {MAX_BODY_BYTES} bytes", applied=False)
    raw = await request.read()
    if not raw:
        raise ApiError(400, "bad_json", "request body is empty; a JSON object is required", applied=False)
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}", applied=False) from None
    except RecursionError:
        raise ApiError(400, "bad_json", "body is nested too deeply", applied=False) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}", applied=False) from None
    return data if model is None else model.model_validate(data)


def int_param(request: web.Request, name: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
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
    if raw is None or raw == "":
        return default
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
    # Namespaced by operation, so the same key on a different call is a different request.
    return f"idem:{request.method}:{request.path}:{key}"


async def consistent_read(request: web.Request) -> dict[str, Any] | None:
    """Linearizable by default: a read barrier first. Serializable: local, with staleness."""
    store = request.app[STORE]
    consistency = request.query.get("consistency", "linearizable")
    if consistency == "linearizable":
        await store.linearizable_barrier()
        return None
    if consistency == "serializable":
        st = store.status()
        return {
            "consistency": "serializable",
            "applied_index": st.applied_index,
            "commit_index": st.commit_index,
            "leader_contact_age_seconds": round(store.last_leader_contact_age(), 3),
            "quorum": st.quorum,
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
