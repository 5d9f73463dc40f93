"""The pure membership rules: addresses, aliases, the pending-change rule, catch-up, the lease."""

from __future__ import annotations

import pytest

from rdb import CATCH_UP_MAX_LAG, InvalidMember, caught_up, check_new_member, normalize_address
from rdb._membership import pending_change_index, resolve
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
