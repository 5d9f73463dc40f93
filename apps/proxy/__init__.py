"""A reverse-proxy appliance on rdbsync: the README's worked example of an app.

Management tables (``/v1/tables/<name>/<key>``)::

    listeners     name                 address, port, protocol, home_node
    pools         name                 algorithm
    pool_members  <pool>:<name>        pool -> pools, address, port, weight, enabled
    routes        <listener>:<name>    listener -> listeners, pool -> pools, host, path_prefix, priority

Per-node tables (blade ``proxy``): what the proxy daemon on a node needs to serve::

    listeners  the listeners homed on this node
    routes     the routes of those listeners, each with its listener's bind address
    pools      every pool
    members    the enabled pool members

Consumers: the ``proxy`` protocol (its data plane: ``GET /v1/data/proxy/route``, which
upstreams would this request go to) and the ``healthcheck`` client application.

Load it with ``--app apps.proxy:app``. Uses only the public API, ``node.app``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from node.app import (
    App,
    BadRequest,
    BladeTable,
    BladeView,
    Consumer,
    Context,
    DataPlane,
    Table,
    homed_on_node,
    parent_homed_on_node,
)

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class Listener(_Row):
    name: Name
    address: str
    port: Port
    protocol: Literal["http", "https"] = "http"
    home_node: Name

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _ip(value)


class Pool(_Row):
    name: Name
    algorithm: Literal["round_robin", "least_conn"] = "round_robin"


class PoolMember(_Row):
    pool: Name
    name: Name
    address: str
    port: Port
    weight: StrictInt = Field(default=1, ge=1, le=1000)
    enabled: StrictBool = True

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _ip(value)


class Route(_Row):
    listener: Name
    name: Name
    pool: Name
    host: str = Field(default="*", min_length=1, max_length=253, pattern=r"^(\*|[A-Za-z0-9.\-]+)$")
    path_prefix: str = Field(default="/", pattern=r"^/[^\s]*$", max_length=1024)
    priority: StrictInt = Field(default=100, ge=0, le=10_000)


TABLES = (
    Table("listeners", Listener),
    Table("pools", Pool),
    Table("pool_members", PoolMember, key=("pool", "name"), references={"pool": "pools"}),
    Table("routes", Route, key=("listener", "name"), references={"listener": "listeners", "pool": "pools"}),
)


def _with_bind(ctx: Context, route: dict[str, Any]) -> dict[str, Any]:
    listener = ctx.parent(route, "listener") or {}
    return {**route, "bind": f"{listener.get('address')}:{listener.get('port')}"}


BLADES = (
    BladeTable("listeners", "proxy", "listeners", where=homed_on_node()),
    BladeTable(
        "routes",
        "proxy",
        "routes",
        where=parent_homed_on_node("listener"),
        transform=_with_bind,
        joins=("listener",),
        index=("listener",),
    ),
    BladeTable("pools", "proxy", "pools"),
    BladeTable("members", "proxy", "pool_members", where=lambda _ctx, row: row.get("enabled") is True, index=("pool",)),
)


def _matches(route: Mapping[str, Any], host: str, path: str) -> bool:
    prefix = str(route["path_prefix"])
    on_path = path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")
    return route["host"] in ("*", host) and on_path


def route_request(tables: Mapping[str, BladeView], query: Mapping[str, str]) -> dict[str, Any]:
    """Where would the proxy on this node send ``host`` + ``path`` arriving on ``listener``?
    The most specific route wins: an exact host over ``*``, then the longest path prefix,
    then the lowest priority number."""
    listener, host, path = query["listener"], query["host"].lower(), query["path"]
    if not path.startswith("/"):
        raise BadRequest(f"path {path[:60]!r} must start with '/'")
    if listener not in tables["listeners"].rows():
        return {"action": "reject", "reason": f"listener {listener!r} is not served on this node", "upstreams": []}
    candidates = [r for r in tables["routes"].lookup("listener", listener) if _matches(r, host, path)]
    if not candidates:
        return {"action": "reject", "reason": f"no route of {listener} matches {host}{path}", "upstreams": []}
    best = min(candidates, key=lambda r: (r["host"] == "*", -len(str(r["path_prefix"])), int(r["priority"])))
    pool = tables["pools"].rows().get(str(best["pool"]))
    members = sorted(tables["members"].lookup("pool", best["pool"]), key=lambda m: str(m["name"]))
    base = {"route": best["name"], "pool": best["pool"], "bind": best["bind"]}
    if pool is None or not members:
        return {**base, "action": "reject", "reason": f"pool {best['pool']} has no enabled member", "upstreams": []}
    upstreams = [{"address": f"{m['address']}:{m['port']}", "weight": m["weight"]} for m in members]
    return {
        **base,
        "action": "forward",
        "algorithm": pool["algorithm"],
        "reason": "route matches",
        "upstreams": upstreams,
    }


CONSUMERS = (
    Consumer("proxy", frozenset({"listeners", "routes", "pools", "members"})),
    Consumer("healthcheck", frozenset({"pools", "members"}), kind="application"),
)

DATA_PLANE = (
    DataPlane(
        "proxy",
        "route",
        route_request,
        reads=frozenset({"listeners", "routes", "pools", "members"}),
        params=("listener", "host", "path"),
        scope="listener",
    ),
)

app = App(name="proxy", version="1.0", tables=TABLES, blades=BLADES, consumers=CONSUMERS, data_plane=DATA_PLANE)
