"""An independent reference model of the blade projections and the data-plane decisions.

The chaos checkers judge the product against this model, so it deliberately shares no
code with ``node/`` or ``resync/``: it is written from the product brief (DESIGN.md,
"Management table rows" and the blade-table vocabulary), not from the implementation.

Inputs are plain committed management-table state::

    Config = {table: {row_key: row}}   # table in MANAGEMENT_TABLES; rows as stored

Everything here is a pure function of that state (and the node id for projections).

Projections (``project(config, node)``), blade table name -> {row_key: row}:

- N-blade ``vservers``, ``export_rules``, ``cifs_shares``: every committed row, unchanged.
- N-blade ``lifs``: the LIFs whose ``home_node`` is ``node``.
- N-blade ``vldb``: every volume ``v`` (keyed by the volume's key) as
  ``{"volume", "vserver", "aggregate", "node", "junction_path", "state", "export_policy"}``
  where ``node`` is the ``home_node`` of the volume's aggregate, or None if that
  aggregate does not exist.
- D-blade ``aggregates``: the aggregates homed on ``node``.
- D-blade ``volumes``: the volumes whose aggregate is homed on ``node``.

Decisions (``nfs_decisions`` / ``cifs_decisions``) return every *acceptable* decision,
each reduced to ``DECISION_FIELDS`` (the reason text is free-form and never compared).
There is more than one only when the configuration is ambiguous: two volumes of one
vserver whose junction paths are equally long prefixes of the path. Then any of them is
a correct answer. ``nfs_decision`` / ``cifs_decision`` return one of them.

NFS mount ``(vserver, path, client)``:
  the vserver exists, is ``running`` and lists ``nfs``; the path resolves to the volume of
  that vserver with the longest junction path that is the path itself or a leading path
  component of it (a trailing ``/`` on a junction is ignored; ``/`` covers every absolute
  path); the volume is ``online``; the export rules of ``(vserver, volume.export_policy)``
  that list ``nfs`` (default ``["nfs"]``), taken by ascending ``index``: the first whose
  ``client_match`` CIDR contains the client decides ``rw``/``ro``; none matching: denied.
CIFS connect ``(vserver, share, user="Everyone")``:
  the vserver exists, is ``running`` and lists ``cifs``; the share row
  ``"<vserver>:<share>"`` exists; its ``path`` resolves (as above) to an online volume;
  the ACL entries for ``user`` or ``Everyone``: any ``full_control``/``change`` -> rw,
  else any ``read`` -> ro, else denied.
A denial before a volume is located carries ``volume``/``aggregate``/``node`` None; once a
volume is located they name it, its aggregate and the aggregate's home node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

Row = dict[str, Any]
Config = Mapping[str, Mapping[str, Mapping[str, Any]]]
Decision = dict[str, Any]

MANAGEMENT_TABLES: tuple[str, ...] = ("vservers", "lifs", "aggregates", "volumes", "export_rules", "cifs_shares")
NBLADE_TABLES: tuple[str, ...] = ("vservers", "lifs", "export_rules", "cifs_shares", "vldb")
DBLADE_TABLES: tuple[str, ...] = ("aggregates", "volumes")
BLADE_TABLES: tuple[str, ...] = NBLADE_TABLES + DBLADE_TABLES
#: The fields of a data-plane answer that must equal the model (the reason is free text).
DECISION_FIELDS: tuple[str, ...] = ("access", "volume", "aggregate", "node")
STORAGE_PREFIX = "tables/"

_PERMISSIONS = {"full_control": "rw", "change": "rw", "read": "ro"}


# ------------------------------------------------------------------ committed state


def empty_config() -> dict[str, dict[str, Row]]:
    """A committed state with every management table empty."""
    return {t: {} for t in MANAGEMENT_TABLES}


def split_storage_key(key: str) -> tuple[str, str] | None:
    """``"tables/<table>/<row_key>"`` -> ``(table, row_key)``; None for any other key."""
    if not key.startswith(STORAGE_PREFIX):
        return None
    table, sep, row_key = key[len(STORAGE_PREFIX) :].partition("/")
    if table not in MANAGEMENT_TABLES or not sep or not row_key:
        return None
    return table, row_key


def apply_change(config: dict[str, dict[str, Row]], key: str, row: Mapping[str, Any] | None) -> bool:
    """Apply one committed change (``row`` None: deleted) in place. False if ``key`` is no table row."""
    where = split_storage_key(key)
    if where is None:
        return False
    table, row_key = where
    rows = config.setdefault(table, {})
    if row is None:
        rows.pop(row_key, None)
    else:
        rows[row_key] = dict(row)
    return True


def _rows(config: Config, table: str) -> Mapping[str, Mapping[str, Any]]:
    return config.get(table, {})


# ------------------------------------------------------------------ projections


def _aggregate_home(config: Config, aggregate: Any) -> str | None:
    row = _rows(config, "aggregates").get(str(aggregate))
    if row is None:
        return None
    home = row.get("home_node")
    return home if isinstance(home, str) else None


def vldb_row(config: Config, key: str, volume: Mapping[str, Any]) -> Row:
    """The volume-location row of one committed volume."""
    return {
        "volume": volume.get("name", key),
        "vserver": volume.get("vserver"),
        "aggregate": volume.get("aggregate"),
        "node": _aggregate_home(config, volume.get("aggregate")),
        "junction_path": volume.get("junction_path"),
        "state": volume.get("state"),
        "export_policy": volume.get("export_policy"),
    }


def project_table(config: Config, node: str, table: str) -> dict[str, Row]:
    """The rows blade table ``table`` of node ``node`` must hold for committed ``config``."""
    if table in ("vservers", "export_rules", "cifs_shares"):
        return {k: dict(r) for k, r in _rows(config, table).items()}
    if table in ("lifs", "aggregates"):
        return {k: dict(r) for k, r in _rows(config, table).items() if r.get("home_node") == node}
    if table == "vldb":
        return {k: vldb_row(config, k, r) for k, r in _rows(config, "volumes").items()}
    if table == "volumes":
        return {
            k: dict(r)
            for k, r in _rows(config, "volumes").items()
            if _aggregate_home(config, r.get("aggregate")) == node
        }
    raise KeyError(f"no blade table {table!r}; blade tables: {', '.join(BLADE_TABLES)}")


def project(config: Config, node: str) -> dict[str, dict[str, Row]]:
    """Every blade table of node ``node`` (names are unique across the two blades)."""
    return {t: project_table(config, node, t) for t in BLADE_TABLES}


# ------------------------------------------------------------------ decisions


def _denied() -> Decision:
    return {"access": "denied", "volume": None, "aggregate": None, "node": None}


def _at(volume: Mapping[str, Any], access: str) -> Decision:
    return {"access": access, "volume": volume["volume"], "aggregate": volume["aggregate"], "node": volume["node"]}


def _vserver_serves(config: Config, vserver: str, protocol: str) -> bool:
    row = _rows(config, "vservers").get(vserver)
    return row is not None and row.get("state") == "running" and protocol in (row.get("protocols") or [])


def _junction(value: Any) -> str:
    text = str(value).rstrip("/")
    return text or "/"


def _covers(junction: str, path: str) -> bool:
    if junction == "/":
        return path.startswith("/")
    return path == junction or path.startswith(junction + "/")


def resolve_path(config: Config, vserver: str, path: str) -> list[Row]:
    """The vldb rows of ``vserver`` with the longest junction path covering ``path`` (ties: all)."""
    best: list[Row] = []
    best_len = -1
    for key, volume in sorted(_rows(config, "volumes").items()):
        if volume.get("vserver") != vserver:
            continue
        junction = _junction(volume.get("junction_path"))
        if not _covers(junction, path):
            continue
        length = 0 if junction == "/" else len(junction)
        if length > best_len:
            best, best_len = [vldb_row(config, key, volume)], length
        elif length == best_len:
            best.append(vldb_row(config, key, volume))
    return best


def _nfs_access(
    config: Config, vserver: str, policy: Any, client: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> str:
    rules = [
        r
        for r in _rows(config, "export_rules").values()
        if r.get("vserver") == vserver and r.get("policy") == policy and "nfs" in (r.get("protocols") or ["nfs"])
    ]
    rules.sort(key=lambda r: int(r["index"]))
    for rule in rules:
        network = ipaddress.ip_network(str(rule["client_match"]), strict=False)
        if network.version == client.version and client in network:
            return str(rule["access"])
    return "denied"


def nfs_decisions(config: Config, vserver: str, path: str, client: str) -> list[Decision]:
    """Every acceptable NFS mount decision. Raises ValueError if ``client`` is no IP address."""
    client_ip = ipaddress.ip_address(client)
    if not _vserver_serves(config, vserver, "nfs"):
        return [_denied()]
    volumes = resolve_path(config, vserver, path)
    if not volumes:
        return [_denied()]
    out: list[Decision] = []
    for volume in volumes:
        if volume["state"] != "online":
            out.append(_at(volume, "denied"))
        else:
            out.append(_at(volume, _nfs_access(config, vserver, volume["export_policy"], client_ip)))
    return out


def cifs_decisions(config: Config, vserver: str, share: str, user: str = "Everyone") -> list[Decision]:
    """Every acceptable CIFS connect decision for ``user`` (ACL entries for it or Everyone count)."""
    if not _vserver_serves(config, vserver, "cifs"):
        return [_denied()]
    share_row = _rows(config, "cifs_shares").get(f"{vserver}:{share}")
    if share_row is None:
        return [_denied()]
    volumes = resolve_path(config, vserver, str(share_row.get("path")))
    if not volumes:
        return [_denied()]
    grants = {
        _PERMISSIONS.get(str(entry.get("permission")))
        for entry in share_row.get("acl") or []
        if entry.get("user") in (user, "Everyone")
    }
    access = "rw" if "rw" in grants else "ro" if "ro" in grants else "denied"
    return [_at(v, access if v["state"] == "online" else "denied") for v in volumes]


def nfs_decision(config: Config, vserver: str, path: str, client: str) -> Decision:
    """One acceptable NFS decision (the first of ``nfs_decisions``)."""
    return nfs_decisions(config, vserver, path, client)[0]


def cifs_decision(config: Config, vserver: str, share: str, user: str = "Everyone") -> Decision:
    """One acceptable CIFS decision (the first of ``cifs_decisions``)."""
    return cifs_decisions(config, vserver, share, user)[0]


def decide(config: Config, protocol: str, query: Mapping[str, Any]) -> list[Decision]:
    """Acceptable decisions for a data-plane probe: ``protocol`` "nfs" with ``query``
    ``{"vserver", "path", "client"}`` or "cifs" with ``{"vserver", "share"[, "user"]}``.
    Raises ValueError on a malformed query."""
    try:
        if protocol == "nfs":
            return nfs_decisions(config, str(query["vserver"]), str(query["path"]), str(query["client"]))
        if protocol == "cifs":
            return cifs_decisions(
                config, str(query["vserver"]), str(query["share"]), str(query.get("user") or "Everyone")
            )
    except KeyError as exc:
        raise ValueError(f"{protocol} probe lacks {exc}") from None
    raise ValueError(f"unknown data-plane protocol {protocol!r}")


def answer_fields(answer: Mapping[str, Any]) -> tuple[Any, ...]:
    """The compared part of a data-plane answer or decision."""
    return tuple(answer.get(f) for f in DECISION_FIELDS)


def acceptable(answer: Mapping[str, Any], decisions: list[Decision]) -> bool:
    """Does ``answer`` agree with one of the acceptable ``decisions`` on ``DECISION_FIELDS``?"""
    fields = answer_fields(answer)
    return any(answer_fields(d) == fields for d in decisions)
