"""The ONTAP app's data plane: NFS mount and CIFS connect decisions, answered from blade
tables only (never from the RDB).

Pure functions of the blade rows: the node runs the fence guard first and adds the
revision the tables reflect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from node.app import BadRequest, BladeView, DataPlane, QueryParam

Decision = dict[str, Any]

#: The blade tables each data-plane protocol answers from: its fencing policy must
#: depend on all of them node-wide, and its answers carry the revision they all reflect.
DATA_PLANE_READS: dict[str, frozenset[str]] = {
    "nfs": frozenset({"vservers", "vldb", "export_rules"}),
    "cifs": frozenset({"vservers", "vldb", "cifs_shares"}),
}


def _deny(reason: str, **extra: Any) -> Decision:
    return {"access": "denied", "reason": reason, "volume": None, "aggregate": None, "node": None, **extra}


def _vserver_allows(nblade: Mapping[str, BladeView], vserver: str, protocol: str) -> str | None:
    row = nblade["vservers"].rows().get(vserver)
    if row is None:
        return f"vserver {vserver!r} does not exist"
    if row.get("state") != "running":
        return f"vserver {vserver!r} is {row.get('state')}"
    if protocol not in row.get("protocols", []):
        return f"{protocol} is not allowed on vserver {vserver!r}"
    return None


def _resolve_path(nblade: Mapping[str, BladeView], vserver: str, path: str) -> Mapping[str, Any] | None:
    """The vldb row whose junction path is the longest prefix of ``path``."""
    best: Mapping[str, Any] | None = None
    for row in nblade["vldb"].lookup("vserver", vserver):
        junction = str(row["junction_path"]).rstrip("/") or "/"
        if path == junction or path.startswith(junction if junction == "/" else junction + "/"):
            if best is None or len(junction) > len(str(best["junction_path"]).rstrip("/")):
                best = row
    return best


def _located(volume: Mapping[str, Any], access: str, reason: str) -> Decision:
    return {
        "access": access,
        "reason": reason,
        "volume": volume["volume"],
        "aggregate": volume["aggregate"],
        "node": volume["node"],
    }


def nfs_mount(nblade: Mapping[str, BladeView], vserver: str, path: str, client: str) -> Decision:
    """May ``client`` mount ``path`` on ``vserver`` over NFS? Raises ValueError on a bad client IP."""
    client_ip = ipaddress.ip_address(client)
    denied = _vserver_allows(nblade, vserver, "nfs")
    if denied:
        return _deny(denied)
    volume = _resolve_path(nblade, vserver, path)
    if volume is None:
        return _deny(f"no volume is mounted at {path!r} on vserver {vserver!r}")
    if volume["state"] != "online":
        return _located(volume, "denied", f"volume {volume['volume']} is {volume['state']}")
    rules = [
        r
        for r in nblade["export_rules"].lookup("vserver", vserver)
        if r["policy"] == volume["export_policy"] and "nfs" in r.get("protocols", ["nfs"])
    ]
    for rule in sorted(rules, key=lambda r: int(r["index"])):
        if client_ip in ipaddress.ip_network(rule["client_match"], strict=False):
            return _located(
                volume,
                rule["access"],
                f"export policy {rule['policy']} rule {rule['index']} ({rule['client_match']}) matches",
            )
    return _located(volume, "denied", f"no rule of export policy {volume['export_policy']} matches {client}")


_PERMISSION_ACCESS = {"full_control": "rw", "change": "rw", "read": "ro"}


def cifs_connect(nblade: Mapping[str, BladeView], vserver: str, share: str, user: str = "Everyone") -> Decision:
    """May ``user`` connect to ``share`` on ``vserver`` over CIFS?"""
    denied = _vserver_allows(nblade, vserver, "cifs")
    if denied:
        return _deny(denied)
    share_row = nblade["cifs_shares"].rows().get(f"{vserver}:{share}")
    if share_row is None:
        return _deny(f"share {share!r} does not exist on vserver {vserver!r}")
    volume = _resolve_path(nblade, vserver, str(share_row["path"]))
    if volume is None:
        return _deny(f"share path {share_row['path']!r} is not on any volume")
    if volume["state"] != "online":
        return _located(volume, "denied", f"volume {volume['volume']} is {volume['state']}")
    grants = [a["permission"] for a in share_row.get("acl", []) if a["user"] in (user, "Everyone")]
    if not grants:
        return _located(volume, "denied", f"the ACL of share {share!r} grants {user!r} nothing")
    best = "rw" if any(_PERMISSION_ACCESS[g] == "rw" for g in grants) else "ro"
    return _located(volume, best, f"share {share!r} ACL grants {best}")


def _nfs(tables: Mapping[str, BladeView], query: Mapping[str, str]) -> Decision:
    client = query["client"]
    try:
        ipaddress.ip_address(client)
    except ValueError:
        raise BadRequest(f"client {client[:60]!r} is not an IP address") from None
    return nfs_mount(tables, query["vserver"], query["path"], client)


def _cifs(tables: Mapping[str, BladeView], query: Mapping[str, str]) -> Decision:
    return cifs_connect(tables, query["vserver"], query["share"], query.get("user") or "Everyone")


_IP = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}

DATA_PLANE: tuple[DataPlane, ...] = (
    DataPlane(
        "nfs",
        "mount",
        _nfs,
        DATA_PLANE_READS["nfs"],
        params=("vserver", "path", "client"),
        scope="vserver",
        summary="may this client mount this path (from blade tables only)",
        docs=(
            QueryParam("vserver", example="vs1"),
            QueryParam("path", example="/vol1"),
            QueryParam("client", _IP, example="10.1.2.3"),
        ),
    ),
    DataPlane(
        "cifs",
        "connect",
        _cifs,
        DATA_PLANE_READS["cifs"],
        params=("vserver", "share"),
        scope="vserver",
        summary="may this user connect to this share (from blade tables only)",
        docs=(
            QueryParam("vserver", example="vs1"),
            QueryParam("share", example="share1"),
            QueryParam("user", example="alice", description="the user (empty or left out: Everyone)"),
        ),
    ),
)
