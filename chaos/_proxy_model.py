"""An independent reference model of the reverse-proxy app (``apps.proxy``): its per-node
tables and its data-plane decision, written from the app's documented behaviour, sharing
no code with it.

Management tables: ``listeners`` (name), ``pools`` (name), ``pool_members``
(``<pool>:<name>``), ``routes`` (``<listener>:<name>``). Per node (blade ``proxy``):

- ``listeners``: the listeners whose ``home_node`` is the node;
- ``routes``: the routes whose listener is homed on the node, each with
  ``bind = "<listener address>:<listener port>"``;
- ``pools``: every pool; ``members``: the pool members with ``enabled`` true.

Decision for ``(node, listener, host, path)``: reject unless the listener is homed on the
node; the routes of the listener whose host is ``*`` or the host and whose
``path_prefix`` is the path or a leading path component of it; the most specific wins
(exact host, then longest prefix, then lowest priority; ties are all acceptable); reject
if its pool has no enabled member, else forward to those members sorted by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Config = Mapping[str, Mapping[str, Mapping[str, Any]]]
Row = dict[str, Any]

MANAGEMENT_TABLES: tuple[str, ...] = ("listeners", "pools", "pool_members", "routes")
BLADES: dict[str, str] = {"listeners": "proxy", "routes": "proxy", "pools": "proxy", "members": "proxy"}
DECISION_FIELDS: tuple[str, ...] = ("action", "route", "pool", "upstreams")


def _rows(config: Config, table: str) -> Mapping[str, Mapping[str, Any]]:
    return config.get(table, {})


def _listener_home(config: Config, listener: Any) -> Mapping[str, Any] | None:
    return _rows(config, "listeners").get(str(listener))


def project_table(config: Config, node: str, table: str) -> dict[str, Row]:
    if table == "listeners":
        return {k: dict(r) for k, r in _rows(config, "listeners").items() if r.get("home_node") == node}
    if table == "routes":
        out = {}
        for k, r in _rows(config, "routes").items():
            listener = _listener_home(config, r.get("listener"))
            if listener is not None and listener.get("home_node") == node:
                out[k] = {**r, "bind": f"{listener.get('address')}:{listener.get('port')}"}
        return out
    if table == "pools":
        return {k: dict(r) for k, r in _rows(config, "pools").items()}
    if table == "members":
        return {k: dict(r) for k, r in _rows(config, "pool_members").items() if r.get("enabled", True) is True}
    raise KeyError(f"no blade table {table!r}")


def _covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _reject(route: Any = None, pool: Any = None) -> Row:
    return {"action": "reject", "route": route, "pool": pool, "upstreams": []}


def decisions(config: Config, node: str, listener: str, host: str, path: str) -> list[Row]:
    """Every acceptable decision of node ``node``'s proxy (ties: several)."""
    mine = project_table(config, node, "routes")
    if listener not in project_table(config, node, "listeners"):
        return [_reject()]
    host = host.lower()
    matching = [
        r
        for r in mine.values()
        if r.get("listener") == listener and r.get("host") in ("*", host) and _covers(str(r.get("path_prefix")), path)
    ]
    if not matching:
        return [_reject()]

    def rank(r: Mapping[str, Any]) -> tuple[bool, int, int]:
        return (r.get("host") == "*", -len(str(r.get("path_prefix"))), int(r.get("priority", 100)))

    best = min(rank(r) for r in matching)
    out = []
    members = project_table(config, node, "members")
    for route in (r for r in matching if rank(r) == best):
        pool = route.get("pool")
        enabled = sorted((m for m in members.values() if m.get("pool") == pool), key=lambda m: str(m.get("name")))
        if str(pool) not in _rows(config, "pools") or not enabled:
            out.append(_reject(route.get("name"), pool))
            continue
        upstreams = [{"address": f"{m['address']}:{m['port']}", "weight": m.get("weight", 1)} for m in enabled]
        out.append({"action": "forward", "route": route.get("name"), "pool": pool, "upstreams": upstreams})
    return out
