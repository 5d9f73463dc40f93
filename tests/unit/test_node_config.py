"""Node configuration: flag > env > default, and the fencing policy file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from node._config import NodeConfig, add_node_arguments, load_fence_policy, parse_node_config, policy_relaxations
from node._exceptions import ConfigError

BASE = ["--id", "n1", "--raft", "127.0.0.1:7001", "--http", "127.0.0.1:8001", "--data-dir", "/tmp/x"]
ENV = {"RDBSYNC_SECRET": "s3cret"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return parser.parse_args(BASE + argv)


def test_flag_beats_env_beats_default() -> None:
    def grace(config: NodeConfig) -> float:
        return config.fence_policy.grace("nfs")

    assert grace(parse_node_config(parse([]), ENV)) == 5.0
    assert grace(parse_node_config(parse([]), {**ENV, "RDBSYNC_QUORUM_GRACE": "2"})) == 2.0
    args = parse(["--quorum-grace", "1"])
    assert grace(parse_node_config(args, {**ENV, "RDBSYNC_QUORUM_GRACE": "2"})) == 1.0


def test_a_grace_below_half_a_second_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--quorum-grace must be between 0\.5"):
        parse_node_config(parse(["--quorum-grace", "0.1"]), ENV)


def test_a_relaxed_policy_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("failures_to_fence = 3\n")
    assert policy_relaxations(load_fence_policy(str(path), 5.0)) == [
        "consumers keep serving through 2 failed resync(s) in a row"
    ]
    assert policy_relaxations(parse_node_config(parse([]), ENV).fence_policy) == []


def test_without_a_policy_file_the_defaults_use_the_quorum_grace() -> None:
    config = parse_node_config(parse(["--quorum-grace", "1.5"]), ENV)
    assert config.fence_policy.grace("nfs") == 1.5 and config.fence_policy.consumers() == ["cifs", "iscsi", "nfs"]


def test_a_toml_policy_file_from_the_env(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[consumers.backup]\nkind = "application"\ntables = ["volumes"]\n')
    config = parse_node_config(parse([]), {**ENV, "RDBSYNC_FENCE_POLICY": str(path)})
    assert config.fence_policy.kind("backup") == "application"
    assert config.fence_policy.consumers() == ["backup", "cifs", "iscsi", "nfs"]


def test_a_json_policy_file_from_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"failures_to_fence": 3}))
    config = parse_node_config(parse(["--fence-policy", str(path), "--quorum-grace", "2"]), ENV)
    assert config.fence_policy.failures_to_fence == 3 and config.fence_policy.grace("cifs") == 2.0


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.yaml", "a: 1", "must end in .toml or .json"),
        ("p.toml", "consumers = [", "is not valid TOML"),
        ("p.json", "{", "is not valid JSON"),
        ("p.json", "[1]", "at the top level"),
        ("p.toml", "failures_to_fence = 0", "failures_to_fence"),
        ("p.toml", '[consumers.nfs]\ntables = ["vservers", "vldb"]', "must include ['export_rules']"),
        ("p.toml", '[consumers.cifs]\ntables = ["lifs"]\n', "must include ['cifs_shares', 'vldb', 'vservers']"),
    ],
)
def test_a_bad_policy_file_is_a_config_error_that_says_why(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_fence_policy(str(path), 5.0)
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the fencing policy"):
        load_fence_policy(str(tmp_path / "absent.toml"), 5.0)


def test_the_readme_policy_example_is_a_valid_policy(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "policy.toml"
    path.write_text(example)
    policy = load_fence_policy(str(path), 5.0)
    assert policy.kind("backup") == "application" and policy.scoped["nfs"]


def test_connection_limits_come_from_flags_or_env() -> None:
    default = parse_node_config(parse([]), ENV)
    assert (default.header_timeout, default.body_timeout, default.max_connections) == (30.0, 30.0, 1000)
    env = {**ENV, "RDBSYNC_HEADER_TIMEOUT": "2", "RDBSYNC_BODY_TIMEOUT": "3", "RDBSYNC_MAX_CONNECTIONS": "50"}
    from_env = parse_node_config(parse([]), env)
    assert (from_env.header_timeout, from_env.body_timeout, from_env.max_connections) == (2.0, 3.0, 50)
    flags = parse_node_config(parse(["--header-timeout", "0.5", "--max-connections", "7"]), env)
    assert (flags.header_timeout, flags.max_connections) == (0.5, 7)
    with pytest.raises(ConfigError, match="--body-timeout"):
        parse_node_config(parse(["--body-timeout", "0"]), ENV)


def test_join_needs_peers_and_comes_from_a_flag_or_the_env() -> None:
    with pytest.raises(ConfigError, match="--join"):
        parse_node_config(parse(["--join"]), ENV)
    peer = ["--peer", "n2=127.0.0.1:7002=http://127.0.0.1:8002"]
    assert parse_node_config(parse([*peer, "--join"]), ENV).join
    assert parse_node_config(parse(peer), {**ENV, "RDBSYNC_JOIN": "1"}).join
    assert not parse_node_config(parse(peer), ENV).join


def test_the_election_timeout_from_flag_or_env_and_its_checks() -> None:
    from node._config import DEFAULT_ELECTION_TIMEOUT

    assert parse_node_config(parse([]), ENV).election_timeout == DEFAULT_ELECTION_TIMEOUT
    env = {**ENV, "RDBSYNC_ELECTION_TIMEOUT": "0.4,0.9"}
    assert parse_node_config(parse([]), env).election_timeout == (0.4, 0.9)
    assert parse_node_config(parse(["--election-timeout", "1,2"]), env).election_timeout == (1.0, 2.0)
    for bad, message in (("0.5", "MIN,MAX"), ("0.05,1", "between 0.1"), ("0.5,0.6", "1.5 x MIN")):
        with pytest.raises(ConfigError, match=message):
            parse_node_config(parse(["--election-timeout", bad]), ENV)
