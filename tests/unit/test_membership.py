"""The pure membership rules: addresses, aliases, the pending-change rule, catch-up, the lease."""

from __future__ import annotations

import pytest

from rdb import CATCH_UP_MAX_LAG, InvalidMember, caught_up, check_new_member, normalize_address
from rdb._membership import may_promote, pending_change_index, resolve
from rdb._store import lease_held

HOSTS = {
    "localhost": "127.0.0.1",
    "127.0.0.1": "127.0.0.1",
    "n2.example": "10.0.0.2",
    "10.0.0.2": "10.0.0.2",
    "10.0.0.3": "10.0.0.3",
}


def fake_resolver(host: str, port: int) -> list[tuple[str, int]]:
    if host not in HOSTS:
        raise OSError(-2, "Name or service not known")
    return [(HOSTS[host], port)]


MEMBERS = ["127.0.0.1:7001", "n2.example:7002"]


@pytest.mark.parametrize(
    "address",
    [
        "h:\u0663",  # an Arabic-Indic digit: int() accepts it, PySyncObj would too
        "\u0661\u0662\u0667.0.0.1:7005",
        "localhost:0",
        "localhost:65536",
        "localhost:-1",
        "localhost:",
        ":7005",
        "localhost",
        "a" * 100_000 + ":7005",
        "bad_host!:7005",
        "-lead.example:7005",
        "localhost:7005\n",
        "local host:7005",
        "[::1]:7005",
        "",
    ],
)
def test_bad_syntax_is_refused(address: str) -> None:
    with pytest.raises(InvalidMember):
        check_new_member(address, MEMBERS, fake_resolver)


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(InvalidMember, match="does not resolve"):
        check_new_member("nowhere.invalid:7005", MEMBERS, fake_resolver)


def test_an_existing_member_is_refused() -> None:
    with pytest.raises(InvalidMember) as info:
        check_new_member("127.0.0.1:7001", MEMBERS, fake_resolver)
    assert info.value.details["reason"] == "already_member"


@pytest.mark.parametrize("alias", ["localhost:7001", "LOCALHOST:7001", "10.0.0.2:7002"])
def test_an_alias_of_a_member_is_refused(alias: str) -> None:
    with pytest.raises(InvalidMember) as info:
        check_new_member(alias, MEMBERS, fake_resolver)
    assert info.value.details["reason"] in ("alias", "already_member")


def test_a_new_address_is_accepted_and_normalized() -> None:
    assert check_new_member("LocalHost:7003", MEMBERS, fake_resolver) == "localhost:7003"
    assert check_new_member("10.0.0.3:7001", MEMBERS, fake_resolver) == "10.0.0.3:7001"  # same port, other host
    assert normalize_address("n2.example.:7002") == "n2.example.:7002"


def test_a_member_whose_name_no_longer_resolves_does_not_block_adds() -> None:
    assert check_new_member("10.0.0.3:7001", ["gone.invalid:7001"], fake_resolver) == "10.0.0.3:7001"


def test_the_system_resolver_resolves_localhost() -> None:
    assert ("127.0.0.1", 7001) in resolve("localhost:7001")


def test_pending_change_index() -> None:
    tail = [(5, False), (6, True), (7, False)]
    assert pending_change_index(tail, 4) == 6
    assert pending_change_index(tail, 6) is None  # committed: a new change may follow
    assert pending_change_index([(5, False), (6, False)], 4) is None
    assert pending_change_index([], 0) is None


def test_caught_up() -> None:
    assert caught_up(1000, 1000)
    assert caught_up(0, CATCH_UP_MAX_LAG)
    assert not caught_up(0, CATCH_UP_MAX_LAG + 1)


def test_lease_held() -> None:
    assert lease_held({"expires_at": 10.0}, 9.0)
    assert not lease_held({"expires_at": 10.0}, 10.0)
    assert not lease_held({"holder": "n1"}, 0.0)
    assert not lease_held(None, 0.0)


def test_a_learner_promotes_only_on_a_committed_add_once_it_holds_what_the_leader_committed() -> None:
    # The add is the newest change for it, committed, and the log covers the leader's commit.
    assert may_promote(True, (40, "add"), 50, 45, 45)
    assert not may_promote(True, (40, "add"), 50, 39, 39)  # the add is not committed yet
    assert not may_promote(True, (40, "rem"), 50, 45, 45)  # removed since
    assert not may_promote(False, (40, "add"), 50, 45, 45)  # not in the member set
    assert not may_promote(True, (40, "add"), 50, 45, None)  # no word from a leader yet
    # The add is in the snapshot: the log has no entry for it, and covers the leader's commit.
    assert may_promote(True, None, 50, 50, 50)


def test_a_wiped_node_never_promotes_on_a_snapshot_older_than_its_removal() -> None:
    # Found by the five-node chaos run: n3 was removed at index 120 and rejoined wiped;
    # the leader's snapshot (index 100) still listed n3, and the learner restarted as a
    # voter before the entries after the snapshot (with the removal) arrived. Its log
    # ends at the snapshot, below what the leader had committed: it must wait.
    assert not may_promote(True, None, 100, 100, 130)
    # Once the entries arrive, the newest change for it is the removal: still a learner.
    assert not may_promote(True, (120, "rem"), 130, 130, 130)
