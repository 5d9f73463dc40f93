"""The ONTAP app's N-blade and D-blade tables, each a projection for one node.

N-blade: vservers, lifs (homed here), export_rules, cifs_shares,
         vldb (volume -> aggregate -> node, for all volumes)
D-blade: aggregates (homed here), volumes (on aggregates homed here)
"""

from __future__ import annotations

from typing import Any

from node.app import BladeTable, Context, homed_on_node, parent_homed_on_node


def _vldb_row(ctx: Context, volume: dict[str, Any]) -> dict[str, Any]:
    aggregate = ctx.parent(volume, "aggregate")
    home = None if aggregate is None else aggregate.get("home_node")
    return {
        "volume": volume["name"],
        "vserver": volume["vserver"],
        "aggregate": volume["aggregate"],
        "node": home if isinstance(home, str) else None,
        "junction_path": volume["junction_path"],
        "state": volume["state"],
        "export_policy": volume["export_policy"],
    }


BLADES: tuple[BladeTable, ...] = (
    BladeTable("vservers", "nblade", "vservers"),
    BladeTable("lifs", "nblade", "lifs", where=homed_on_node(), index=("vserver",)),
    BladeTable("export_rules", "nblade", "export_rules", index=("vserver",)),
    BladeTable("cifs_shares", "nblade", "cifs_shares"),
    BladeTable("vldb", "nblade", "volumes", transform=_vldb_row, joins=("aggregate",), index=("vserver",)),
    BladeTable("aggregates", "dblade", "aggregates", where=homed_on_node()),
    BladeTable("volumes", "dblade", "volumes", where=parent_homed_on_node("aggregate"), joins=("aggregate",)),
)
