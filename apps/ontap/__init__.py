"""The ONTAP-like app, rdbsync's default: vservers, LIFs, aggregates, volumes, export
rules and CIFS shares; N-blade and D-blade tables; the NFS/CIFS data plane; NFS, CIFS
and iSCSI as consumers. Built only from the public app API (``node.app``).

Load it explicitly with ``--app apps.ontap:app`` (it is the default).
"""

from __future__ import annotations

from apps.ontap.blades import BLADES
from apps.ontap.dataplane import DATA_PLANE, cifs_connect, nfs_mount
from apps.ontap.tables import TABLES
from node.app import App, Consumer

VERSION = "1.0"

#: Which blade tables each protocol depends on: a failed one fences it on this node.
CONSUMERS: tuple[Consumer, ...] = (
    Consumer("nfs", frozenset({"vservers", "lifs", "export_rules", "vldb", "volumes"})),
    Consumer("cifs", frozenset({"vservers", "lifs", "cifs_shares", "vldb", "volumes"})),
    Consumer("iscsi", frozenset({"vservers", "lifs", "volumes"})),
)

app = App(
    name="ontap",
    version=VERSION,
    tables=TABLES,
    blades=BLADES,
    consumers=CONSUMERS,
    data_plane=DATA_PLANE,
)

__all__ = ["app", "cifs_connect", "nfs_mount"]
