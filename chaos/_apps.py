"""What the chaos harness knows of each app it can run (``rdbsync chaos --app``): its
tables, an independent model of its projections and data plane, and the load it puts on
them. The harness imports no product code: a model is written from the app's documented
behaviour (``chaos._model`` for ONTAP, ``chaos._proxy_model`` for the proxy).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from chaos import _model, _proxy_model

Config = Mapping[str, Mapping[str, Mapping[str, Any]]]
Query = tuple[str, ...]
Rows = list[tuple[str, str, dict[str, Any]]]


@dataclass(frozen=True)
class Probe:
    """One data-plane request: ``f`` names the consumer, ``path`` is the URL path and query."""

    f: str
    path: str
    value: dict[str, Any]
    key: str


@dataclass(frozen=True)
class AppModel:
    name: str
    spec: str  # what `rdbsync node --app` is given
    management_tables: tuple[str, ...]
    blades: Mapping[str, str]  # blade table -> blade
    decision_fields: tuple[str, ...]
    #: consumer -> blade tables whose failure must fence it (the app's default policy).
    dependencies: Mapping[str, frozenset[str]]
    project_table: Callable[[Config, str, str], dict[str, Any]]
    #: the acceptable decisions for a query (as ``query_of`` builds it); ValueError: bad probe.
    decide: Callable[[Config, Query], list[dict[str, Any]]]
    #: the query of a recorded probe op, or None if malformed.
    query_of: Callable[[Mapping[str, Any]], Query | None]
    base_config: Callable[[list[str]], Rows]
    churn: Callable[[random.Random, list[str]], tuple[str, str, dict[str, Any]]]
    probe: Callable[[random.Random], Probe]
    #: (blade table, key) the tamper fault overwrites.
    tamper_targets: tuple[tuple[str, str], ...]
    #: answers depend on the node (so probes go to a named node, never the shared address).
    per_node_answers: bool = False
    #: the blade table the data-plane daemons of ``--agents`` hold (``chaos._agents``).
    agent_table: str = ""

    @property
    def blade_tables(self) -> tuple[str, ...]:
        return tuple(self.blades)

    def acceptable(self, answer: Mapping[str, Any], decisions: list[dict[str, Any]]) -> bool:
        fields = tuple(answer.get(f) for f in self.decision_fields)
        return any(tuple(d.get(f) for f in self.decision_fields) == fields for d in decisions)


# ------------------------------------------------------------------ ONTAP


def _ontap_decide(config: Config, query: Query) -> list[dict[str, Any]]:
    protocol, vserver, arg, extra = query
    if protocol == "nfs":
        return _model.nfs_decisions(config, vserver, arg, extra)
    return _model.cifs_decisions(config, vserver, arg, extra)


def _ontap_query(op: Mapping[str, Any]) -> Query | None:
    f, value = op.get("f"), op.get("value")
    if not isinstance(value, Mapping):
        return None
    try:
        if f == "nfs":
            return ("nfs", str(value["vserver"]), str(value["path"]), str(value["client"]))
        if f == "cifs":
            return ("cifs", str(value["vserver"]), str(value["share"]), str(value.get("user") or "Everyone"))
    except KeyError:
        return None
    return None


_CLIENTS = ("10.1.2.3", "192.168.7.9", "172.16.0.5")


def _ontap_probe(rng: random.Random) -> Probe:
    vserver = f"vs{rng.randrange(2)}"
    if rng.random() < 0.6:
        path = f"/vol{rng.randrange(4)}" + rng.choice(["", "/sub"])
        client = rng.choice(_CLIENTS)
        url = f"/v1/data/nfs/mount?vserver={vserver}&path={quote(path)}&client={client}"
        return Probe("nfs", url, {"vserver": vserver, "path": path, "client": client}, f"{vserver}:{path}")
    share = f"sh{rng.randrange(3)}"
    url = f"/v1/data/cifs/connect?vserver={vserver}&share={share}"
    return Probe("cifs", url, {"vserver": vserver, "share": share}, f"{vserver}:{share}")


def _ontap_base(nodes: list[str]) -> Rows:
    from chaos._workload import base_config  # the ONTAP base config predates the app models

    return base_config()


def _ontap_churn(rng: random.Random, nodes: list[str]) -> tuple[str, str, dict[str, Any]]:
    from chaos._workload import ontap_churn

    return ontap_churn(rng, nodes)


ONTAP = AppModel(
    name="ontap",
    spec="apps.ontap:app",
    management_tables=_model.MANAGEMENT_TABLES,
    blades={**dict.fromkeys(_model.NBLADE_TABLES, "nblade"), **dict.fromkeys(_model.DBLADE_TABLES, "dblade")},
    decision_fields=_model.DECISION_FIELDS,
    dependencies={
        "nfs": frozenset({"vservers", "lifs", "export_rules", "vldb", "volumes"}),
        "cifs": frozenset({"vservers", "lifs", "cifs_shares", "vldb", "volumes"}),
        "iscsi": frozenset({"vservers", "lifs", "volumes"}),
    },
    project_table=_model.project_table,
    decide=_ontap_decide,
    query_of=_ontap_query,
    base_config=_ontap_base,
    churn=_ontap_churn,
    probe=_ontap_probe,
    tamper_targets=(("vservers", "vs0"), ("export_rules", "vs0:default:1"), ("vldb", "vol0")),
    agent_table="volumes",  # per node: the volumes on aggregates homed there
)


# ------------------------------------------------------------------ reverse proxy


def _proxy_decide(config: Config, query: Query) -> list[dict[str, Any]]:
    _, node, listener, host, path = query
    return _proxy_model.decisions(config, node, listener, host, path)


def _proxy_query(op: Mapping[str, Any]) -> Query | None:
    value, node = op.get("value"), op.get("node")
    if op.get("f") != "proxy" or not isinstance(value, Mapping) or not isinstance(node, str) or node == "shared":
        return None
    try:
        return ("proxy", node, str(value["listener"]), str(value["host"]), str(value["path"]))
    except KeyError:
        return None


def _proxy_probe(rng: random.Random) -> Probe:
    listener = f"l{rng.randrange(2)}"
    host = rng.choice(["a.example", "b.example"])
    path = rng.choice(["/", "/api/x", "/static/y", "/other"])
    url = f"/v1/data/proxy/route?listener={listener}&host={host}&path={quote(path)}"
    return Probe("proxy", url, {"listener": listener, "host": host, "path": path}, f"{listener}:{host}{path}")


_PREFIXES = ("/", "/api", "/static")


def _proxy_base(nodes: list[str]) -> Rows:
    rows: Rows = []
    for i in range(2):
        listener = {"name": f"l{i}", "address": f"10.0.0.{i + 1}", "port": 80, "home_node": nodes[i % len(nodes)]}
        rows.append(("listeners", f"l{i}", listener))
    for j in range(3):
        rows.append(("pools", f"p{j}", {"name": f"p{j}"}))
        for k in range(2):
            member = {"pool": f"p{j}", "name": f"m{k}", "address": f"10.1.{j}.{k + 1}", "port": 8080}
            rows.append(("pool_members", f"p{j}:m{k}", member))
    for i in range(2):
        for k, prefix in enumerate(_PREFIXES):
            route = {"listener": f"l{i}", "name": f"r{k}", "pool": f"p{(i + k) % 3}", "path_prefix": prefix}
            rows.append(("routes", f"l{i}:r{k}", route))
    return rows


def _proxy_churn(rng: random.Random, nodes: list[str]) -> tuple[str, str, dict[str, Any]]:
    roll = rng.random()
    if roll < 0.3:
        i = rng.randrange(2)
        row = {"name": f"l{i}", "address": f"10.0.0.{i + 1}", "port": rng.choice([80, 8080]), "home_node": ""}
        row["home_node"] = rng.choice(nodes)
        return "listeners", f"l{i}", row
    if roll < 0.6:
        j, k = rng.randrange(3), rng.randrange(2)
        member = {
            "pool": f"p{j}",
            "name": f"m{k}",
            "address": f"10.1.{j}.{k + 1}",
            "port": 8080,
            "weight": rng.randrange(1, 4),
            "enabled": rng.random() < 0.7,
        }
        return "pool_members", f"p{j}:m{k}", member
    if roll < 0.85:
        i, k = rng.randrange(2), rng.randrange(3)
        route = {
            "listener": f"l{i}",
            "name": f"r{k}",
            "pool": f"p{rng.randrange(3)}",
            "path_prefix": rng.choice(_PREFIXES),
            "host": rng.choice(["*", "*", "a.example"]),
            "priority": rng.choice([10, 100]),
        }
        return "routes", f"l{i}:r{k}", route
    j = rng.randrange(3)
    return "pools", f"p{j}", {"name": f"p{j}", "algorithm": rng.choice(["round_robin", "least_conn"])}


PROXY = AppModel(
    name="proxy",
    spec="apps.proxy:app",
    management_tables=_proxy_model.MANAGEMENT_TABLES,
    blades=_proxy_model.BLADES,
    decision_fields=_proxy_model.DECISION_FIELDS,
    dependencies={
        "proxy": frozenset({"listeners", "routes", "pools", "members"}),
        "healthcheck": frozenset({"pools", "members"}),
    },
    project_table=_proxy_model.project_table,
    decide=_proxy_decide,
    query_of=_proxy_query,
    base_config=_proxy_base,
    churn=_proxy_churn,
    probe=_proxy_probe,
    tamper_targets=(("pools", "p0"), ("members", "p0:m0"), ("routes", "l0:r0")),
    per_node_answers=True,
    agent_table="routes",
)

MODELS: dict[str, AppModel] = {m.spec: m for m in (ONTAP, PROXY)}
