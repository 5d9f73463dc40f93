"""The ONTAP app's management tables: vservers, LIFs, aggregates, volumes, export rules
and CIFS shares, with their schemas, URL keys and references."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from node.app import Table

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Protocol = Literal["nfs", "cifs", "iscsi"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Vserver(_Row):
    name: Name
    state: Literal["running", "stopped"] = "running"
    protocols: list[Protocol] = Field(default_factory=list)
    root_volume: Name | None = None


class Lif(_Row):
    name: Name
    vserver: Name
    address: str
    home_node: Name
    protocols: list[Protocol] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None


class Aggregate(_Row):
    name: Name
    home_node: Name
    size_mb: StrictInt = Field(gt=0)


class Volume(_Row):
    name: Name
    vserver: Name
    aggregate: Name
    size_mb: StrictInt = Field(gt=0)
    state: Literal["online", "offline"] = "online"
    junction_path: str = Field(pattern=r"^/[^\s]*$", max_length=1024)
    export_policy: Name = "default"


def _nfs_only() -> list[Protocol]:
    return ["nfs"]


class ExportRule(_Row):
    vserver: Name
    policy: Name
    index: StrictInt = Field(ge=1, le=65535)
    client_match: str
    access: Literal["ro", "rw"]
    protocols: list[Protocol] = Field(default_factory=lambda: _nfs_only())

    @field_validator("client_match")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8") from None


class AclEntry(_Row):
    user: str = Field(min_length=1, max_length=256)
    permission: Literal["read", "change", "full_control"]


class CifsShare(_Row):
    vserver: Name
    share: Name
    path: str = Field(pattern=r"^/[^\s]*$", max_length=1024)
    acl: list[AclEntry] = Field(default_factory=lambda: [AclEntry(user="Everyone", permission="full_control")])


TABLES: tuple[Table, ...] = (
    Table("vservers", Vserver),
    Table("lifs", Lif, references={"vserver": "vservers"}),
    Table("aggregates", Aggregate),
    Table("volumes", Volume, references={"vserver": "vservers", "aggregate": "aggregates"}),
    Table("export_rules", ExportRule, key=("vserver", "policy", "index"), references={"vserver": "vservers"}),
    Table("cifs_shares", CifsShare, key=("vserver", "share"), references={"vserver": "vservers"}),
)
