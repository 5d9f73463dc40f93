"""Request builders and result parsers shared by ``Client`` and ``AsyncClient``: each
API call is one ``Req`` and one function of the answer body (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rdbsync._core import KeyValue, Req, WatchEvent, key_path


@dataclass(frozen=True)
class Page:
    """One listing: ``kvs`` in key order, ``more`` if the limit cut it, at ``revision``."""

    kvs: list[KeyValue]
    more: bool
    revision: int


def get(key: str, consistency: str | None) -> Req:
    return Req("GET", f"/v1/kv/{key_path(key)}", {"consistency": consistency})


def put(key: str, value: Any, prev_revision: int | None) -> Req:
    return Req(
        "PUT",
        f"/v1/kv/{key_path(key)}",
        {"prev_revision": prev_revision},
        json={"value": value},
        write=True,
        idempotent=True,
    )


def delete(key: str, prev_revision: int | None) -> Req:
    return Req("DELETE", f"/v1/kv/{key_path(key)}", {"prev_revision": prev_revision}, write=True, idempotent=True)


def range_(prefix: str, limit: int | None, start_after: str | None, consistency: str | None) -> Req:
    params = {"prefix": prefix, "limit": limit, "start_after": start_after, "consistency": consistency}
    return Req("GET", "/v1/kv", params)


def page(body: Mapping[str, Any]) -> Page:
    return Page([KeyValue.from_dict(kv) for kv in body["kvs"]], bool(body["more"]), int(body["revision"]))


def txn(compare: Sequence[Mapping[str, Any]], success: Sequence[Mapping[str, Any]], failure: Sequence[Any]) -> Req:
    body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
    return Req("POST", "/v1/txn", json=body, write=True, idempotent=True)


def watch_params(prefix: str, from_revision: int | None) -> dict[str, str]:
    out = {"prefix": prefix}
    if from_revision is not None:
        out["from_revision"] = str(from_revision)
    return out


def watch_event(event: str, data: Mapping[str, Any]) -> WatchEvent:
    kv = data.get("kv")
    prev = data.get("prev_kv")
    return WatchEvent(
        event,
        int(data["revision"]),
        KeyValue.from_dict(kv) if kv else None,
        KeyValue.from_dict(prev) if prev else None,
    )


def status(endpoint: str | None) -> Req:
    return Req("GET", "/v1/status", endpoint=endpoint)


def cluster() -> Req:
    return Req("GET", "/v1/cluster")


def add_member(member_id: str, raft_address: str, http_url: str) -> Req:
    body = {"id": member_id, "raft_address": raft_address, "http_url": http_url}
    return Req("POST", "/v1/cluster/members", json=body, write=True)


def remove_member(member_id: str) -> Req:
    return Req("DELETE", f"/v1/cluster/members/{key_path(member_id)}", write=True)


def resync(table: str | None, dry_run: bool, endpoint: str | None) -> Req:
    return Req("POST", "/v1/resync", {"table": table, "dry_run": dry_run}, write=True, endpoint=endpoint)


def events(endpoint: str | None, after_seq: int) -> Req:
    return Req("GET", "/v1/events", {"after_seq": after_seq or None}, endpoint=endpoint)


def restore(data: bytes) -> Req:
    return Req("POST", "/v1/restore", content=data, write=True)


def tables() -> Req:
    return Req("GET", "/v1/tables")


def rows(table: str, limit: int | None, start_after: str | None, consistency: str | None) -> Req:
    params = {"limit": limit, "start_after": start_after, "consistency": consistency}
    return Req("GET", f"/v1/tables/{key_path(table)}", params)


def row(table: str, key: str, consistency: str | None) -> Req:
    return Req("GET", f"/v1/tables/{key_path(table)}/{key_path(key)}", {"consistency": consistency})


def _wait(wait: str | None, timeout: float | None) -> dict[str, Any]:
    if wait is None:
        return {}
    if wait != "applied":
        raise ValueError("wait must be 'applied' or None")
    return {"wait": wait, "timeout": timeout}


def put_row(
    table: str, key: str, value: Mapping[str, Any], prev_revision: int | None, wait: str | None, timeout: float | None
) -> Req:
    params = {"prev_revision": prev_revision, **_wait(wait, timeout)}
    return Req(
        "PUT",
        f"/v1/tables/{key_path(table)}/{key_path(key)}",
        params,
        json=dict(value),
        write=True,
        idempotent=True,
    )


def delete_row(table: str, key: str, prev_revision: int | None, wait: str | None, timeout: float | None) -> Req:
    params = {"prev_revision": prev_revision, **_wait(wait, timeout)}
    return Req("DELETE", f"/v1/tables/{key_path(table)}/{key_path(key)}", params, write=True, idempotent=True)


def blade_table(blade: str, table: str, endpoint: str | None) -> Req:
    return Req("GET", f"/v1/blades/{key_path(blade)}/{key_path(table)}", endpoint=endpoint)
