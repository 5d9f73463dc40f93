"""Unit tests of the data-plane decisions (``node._dataplane``), answered from N-blade
tables only. The tables are filled directly through the adapter's ``apply`` (what the
resync engine calls) or ``tamper``, never through the RDB.
"""

from __future__ import annotations

from typing import Any

import pytest

from apps.ontap import cifs_connect, nfs_mount
from resync import Action
from tests.ontap import BladeTable, build_blades


def vldb(volume: str, junction: str, *, vserver: str = "vs1", state: str = "online", policy: str = "default") -> Any:
    return {
        "volume": volume,
        "vserver": vserver,
        "aggregate": f"aggr_{volume}",
        "node": "n2",
        "junction_path": junction,
        "state": state,
        "export_policy": policy,
    }


def rule(index: int, client_match: str, access: str, *, policy: str = "default", **extra: Any) -> Action:
    row = {"vserver": "vs1", "policy": policy, "index": index, "client_match": client_match, "access": access}
    return Action("add", f"vs1:{policy}:{index}", {**row, **extra})


def share(name: str, path: str, acl: list[dict[str, str]]) -> Action:
    return Action("add", f"vs1:{name}", {"vserver": "vs1", "share": name, "path": path, "acl": acl})


@pytest.fixture
async def nblade() -> dict[str, BladeTable]:
    nb = build_blades("n1")["nblade"]
    await nb["vservers"].apply(
        [
            Action("add", "vs1", {"name": "vs1", "state": "running", "protocols": ["nfs", "cifs"]}),
            Action("add", "vs_stopped", {"name": "vs_stopped", "state": "stopped", "protocols": ["nfs", "cifs"]}),
            Action("add", "vs_iscsi", {"name": "vs_iscsi", "state": "running", "protocols": ["iscsi"]}),
        ]
    )
    await nb["vldb"].apply(
        [
            Action("add", "root", vldb("root", "/")),
            Action("add", "data", vldb("data", "/data")),
            Action("add", "deep", vldb("deep", "/data/deep/")),
            Action("add", "off", vldb("off", "/off", state="offline")),
            Action("add", "sec", vldb("sec", "/sec", policy="secure")),
            Action("add", "other", vldb("other", "/other", vserver="vs_stopped")),
        ]
    )
    await nb["export_rules"].apply(
        [
            rule(1, "10.1.0.0/16", "ro"),
            rule(2, "10.0.0.0/8", "rw"),
            rule(10, "192.168.0.0/16", "ro"),
            rule(3, "192.168.1.0/24", "rw"),
            rule(4, "172.16.0.0/12", "rw", protocols=["cifs"]),
            rule(1, "10.0.0.5/32", "rw", policy="secure"),
        ]
    )
    await nb["cifs_shares"].apply(
        [
            share("pub", "/data", [{"user": "Everyone", "permission": "read"}]),
            share("team", "/data/deep/x", [{"user": "alice", "permission": "change"}]),
            share(
                "admin",
                "/data",
                [{"user": "root", "permission": "full_control"}, {"user": "Everyone", "permission": "read"}],
            ),
            share("none", "/data", []),
            share("offline", "/off", [{"user": "Everyone", "permission": "full_control"}]),
        ]
    )
    return nb


# ------------------------------------------------------------------ NFS


@pytest.mark.parametrize(
    ("path", "volume"),
    [
        ("/", "root"),
        ("/x", "root"),
        ("/data", "data"),
        ("/data/", "data"),
        ("/data/a/b", "data"),
        ("/datax", "root"),  # not under /data: a junction is a path component
        ("/data/deep", "deep"),  # a trailing slash on the junction does not matter
        ("/data/deep/f", "deep"),
        ("/data/deeper", "data"),
    ],
)
async def test_nfs_longest_junction_prefix_wins(nblade: dict[str, BladeTable], path: str, volume: str) -> None:
    out = nfs_mount(nblade, "vs1", path, "10.2.3.4")
    assert out["volume"] == volume and out["access"] == "rw"
    assert (out["aggregate"], out["node"]) == (f"aggr_{volume}", "n2")


async def test_nfs_no_volume_at_the_path_is_denied(nblade: dict[str, BladeTable]) -> None:
    await nblade["vldb"].apply([Action("remove", "root", None)])
    out = nfs_mount(nblade, "vs1", "/nowhere", "10.2.3.4")
    assert out["access"] == "denied" and out["volume"] is None and "no volume" in out["reason"]


async def test_nfs_offline_volume_is_denied(nblade: dict[str, BladeTable]) -> None:
    out = nfs_mount(nblade, "vs1", "/off/file", "10.2.3.4")
    assert out["access"] == "denied" and out["volume"] == "off" and "offline" in out["reason"]


@pytest.mark.parametrize(
    ("vserver", "reason"),
    [("vs_stopped", "is stopped"), ("vs_iscsi", "nfs is not allowed"), ("ghost", "does not exist")],
)
async def test_nfs_vserver_must_run_and_allow_nfs(nblade: dict[str, BladeTable], vserver: str, reason: str) -> None:
    out = nfs_mount(nblade, vserver, "/other", "10.2.3.4")
    assert out["access"] == "denied" and reason in out["reason"] and out["volume"] is None


@pytest.mark.parametrize(
    ("client", "access", "index"),
    [
        ("10.1.2.3", "ro", 1),  # rule 1 (ro) wins over rule 2 (rw) by index
        ("10.2.2.3", "rw", 2),
        ("192.168.1.7", "rw", 3),  # rule 3 before rule 10, although "10" sorts first as text
        ("192.168.2.7", "ro", 10),
    ],
)
async def test_nfs_first_matching_rule_by_index_wins(
    nblade: dict[str, BladeTable], client: str, access: str, index: int
) -> None:
    out = nfs_mount(nblade, "vs1", "/data", client)
    assert out["access"] == access and f"rule {index} " in out["reason"]


@pytest.mark.parametrize("client", ["8.8.8.8", "172.16.0.1", "::1", "fd00::1"])
async def test_nfs_no_matching_rule_is_denied(nblade: dict[str, BladeTable], client: str) -> None:
    out = nfs_mount(nblade, "vs1", "/data", client)  # 172.16/12 is a CIFS-only rule
    assert out["access"] == "denied" and out["volume"] == "data" and "no rule" in out["reason"]


async def test_nfs_uses_the_volumes_own_export_policy(nblade: dict[str, BladeTable]) -> None:
    assert nfs_mount(nblade, "vs1", "/sec", "10.0.0.5")["access"] == "rw"
    assert nfs_mount(nblade, "vs1", "/sec", "10.0.0.6")["access"] == "denied"


@pytest.mark.parametrize("client", ["not-an-ip", "10.0.0.256", "", "10.0.0.0/8"])
async def test_nfs_invalid_client_ip_raises(nblade: dict[str, BladeTable], client: str) -> None:
    with pytest.raises(ValueError):
        nfs_mount(nblade, "vs1", "/data", client)


async def test_nfs_answers_follow_blade_changes(nblade: dict[str, BladeTable]) -> None:
    await nblade["export_rules"].apply([Action("remove", "vs1:default:1", None)])
    assert nfs_mount(nblade, "vs1", "/data", "10.1.2.3")["access"] == "rw"
    nblade["vldb"].tamper("data", vldb("data", "/data", state="offline"))
    assert nfs_mount(nblade, "vs1", "/data", "10.1.2.3")["access"] == "denied"
    nblade["vldb"].tamper("data", None)
    assert nfs_mount(nblade, "vs1", "/data/a", "10.1.2.3")["volume"] == "root"
    nblade["vservers"].tamper("vs1", {"name": "vs1", "state": "running", "protocols": ["cifs"]})
    assert nfs_mount(nblade, "vs1", "/data", "10.1.2.3")["access"] == "denied"


async def test_nfs_only_sees_its_own_vservers_volumes(nblade: dict[str, BladeTable]) -> None:
    await nblade["vldb"].apply([Action("modify", "other", vldb("other", "/other", vserver="vs_iscsi"))])
    assert nfs_mount(nblade, "vs1", "/other", "10.2.3.4")["volume"] == "root"  # /other belongs to vs_iscsi


# ------------------------------------------------------------------ CIFS


@pytest.mark.parametrize(
    ("share_name", "user", "access"),
    [
        ("pub", "Everyone", "ro"),
        ("pub", "bob", "ro"),  # Everyone's grant applies to every user
        ("team", "alice", "rw"),
        ("team", "bob", "denied"),
        ("admin", "root", "rw"),  # the strongest grant wins
        ("admin", "bob", "ro"),
        ("none", "Everyone", "denied"),
    ],
)
async def test_cifs_acl_decides_access(nblade: dict[str, BladeTable], share_name: str, user: str, access: str) -> None:
    out = cifs_connect(nblade, "vs1", share_name, user)
    assert out["access"] == access
    assert out["volume"] == ("deep" if share_name == "team" else "data")


async def test_cifs_default_user_is_everyone(nblade: dict[str, BladeTable]) -> None:
    assert cifs_connect(nblade, "vs1", "pub")["access"] == "ro"
    assert cifs_connect(nblade, "vs1", "team")["access"] == "denied"


async def test_cifs_share_path_not_on_a_volume_is_denied(nblade: dict[str, BladeTable]) -> None:
    await nblade["vldb"].apply([Action("remove", "root", None)])
    await nblade["cifs_shares"].apply([share("lost", "/nowhere", [{"user": "Everyone", "permission": "read"}])])
    out = cifs_connect(nblade, "vs1", "lost")
    assert out["access"] == "denied" and "not on any volume" in out["reason"] and out["volume"] is None


async def test_cifs_unknown_share_and_offline_volume_are_denied(nblade: dict[str, BladeTable]) -> None:
    out = cifs_connect(nblade, "vs1", "nope")
    assert out["access"] == "denied" and "does not exist" in out["reason"]
    out = cifs_connect(nblade, "vs1", "offline")
    assert out["access"] == "denied" and out["volume"] == "off" and "offline" in out["reason"]


@pytest.mark.parametrize(
    ("vserver", "reason"),
    [("vs_stopped", "is stopped"), ("vs_iscsi", "cifs is not allowed"), ("ghost", "does not exist")],
)
async def test_cifs_vserver_must_run_and_allow_cifs(nblade: dict[str, BladeTable], vserver: str, reason: str) -> None:
    out = cifs_connect(nblade, vserver, "pub")
    assert out["access"] == "denied" and reason in out["reason"]


async def test_cifs_answers_follow_tampered_rows(nblade: dict[str, BladeTable]) -> None:
    nblade["cifs_shares"].tamper(
        "vs1:pub",
        {"vserver": "vs1", "share": "pub", "path": "/data", "acl": [{"user": "Everyone", "permission": "change"}]},
    )
    assert cifs_connect(nblade, "vs1", "pub")["access"] == "rw"
    nblade["cifs_shares"].tamper("vs1:pub", None)
    assert cifs_connect(nblade, "vs1", "pub")["access"] == "denied"


# ------------------------------------------------------------------ the blade table itself


async def test_blade_index_follows_modifies_and_removes(nblade: dict[str, BladeTable]) -> None:
    table = nblade["vldb"]
    assert [r["volume"] for r in table.lookup("vserver", "vs_stopped")] == ["other"]
    await table.apply([Action("modify", "other", vldb("other", "/other", vserver="vs1"))])
    assert table.lookup("vserver", "vs_stopped") == []
    assert "other" in [r["volume"] for r in table.lookup("vserver", "vs1")]
    await table.apply([Action("remove", "other", None)])
    assert "other" not in [r["volume"] for r in table.lookup("vserver", "vs1")]
    assert "other" not in table.rows()
