"""Node configuration: flags and environment variables, one precedence.

Precedence, highest first: command-line flag, environment variable ``RDBSYNC_*``,
built-in default. ``parse_node_config`` raises ``ConfigError`` with a readable message
for anything missing or malformed.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fencing import MIN_QUORUM_GRACE, FencePolicy, PolicyError, policy_from_document
from node._agents import parse_agents
from node._exceptions import AppError, ConfigError
from node._loading import DEFAULT_APP, data_plane_reads, load_app, policy_of
from node._sinks import SinkConfigError, SinkSpec, load_sink_config
from node.app import App


def _default_app() -> App:
    return load_app(DEFAULT_APP)


def _default_policy() -> FencePolicy:
    return policy_of(_default_app(), 5.0)


#: Raft election timeout range (seconds): a dead leader is replaced within about MAX.
#: 0.4,0.8 fails over faster (scripts/bench-failover p50 0.72 s against 0.96 s) but on a
#: loaded 2-core host a 1 MiB write stalls the leader's tick thread past 0.4 s (Fernet):
#: followers then stand for election and the write times out. Not the default yet.
DEFAULT_ELECTION_TIMEOUT = (0.6, 1.2)


@dataclass(frozen=True, slots=True)
class Peer:
    id: str
    raft_address: str
    http_url: str


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    raft_address: str
    http_address: str
    data_dir: str
    secret: str
    peers: tuple[Peer, ...] = ()
    cluster_address: str | None = None
    api_token: str | None = None
    request_timeout: float = 5.0
    log_format: str = "auto"
    fault_injection: bool = False
    join: bool = False  # start as a non-voting learner of an existing cluster
    advertise_url: str = field(default="")
    history_limit: int = 10_000
    audit_interval: float = 60.0
    compaction_entries: int = 20_000
    election_timeout: tuple[float, float] = DEFAULT_ELECTION_TIMEOUT
    fence_policy: FencePolicy = field(default_factory=_default_policy)
    app: App = field(default_factory=_default_app)
    app_spec: str = DEFAULT_APP
    #: Agents this node expects: name -> the blade tables it holds (node/_agents.py).
    agents: Mapping[str, frozenset[str]] = field(default_factory=dict)
    agent_timeout: float = 1.0
    #: File sinks this node renders (node/_sinks.py); each is an agent too.
    sinks: tuple[SinkSpec, ...] = ()
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    max_connections: int = 1000

    @property
    def http_url(self) -> str:
        return self.advertise_url or f"http://{self.http_address}"


ENV_PREFIX = "RDBSYNC_"

#: (flag, env var, help). Every setting can come from either; the flag wins.
SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("--id", "ID", "node id, e.g. n1"),
    ("--raft", "RAFT", "Raft listen address host:port (also the node's Raft identity)"),
    ("--http", "HTTP", "HTTP listen address host:port"),
    ("--peer", "PEERS", "peer as ID=RAFT_HOST:PORT=HTTP_URL; repeat the flag, or comma-separate in the env var"),
    ("--data-dir", "DATA_DIR", "directory for the journal, snapshot and meta files"),
    ("--cluster-address", "CLUSTER_ADDRESS", "shared host:port every node also binds (SO_REUSEPORT)"),
    ("--secret-file", "SECRET_FILE", "file holding the cluster secret for Raft traffic"),
    ("--api-token", "API_TOKEN", "bearer token required on every HTTP request except /healthz"),
    ("--request-timeout", "REQUEST_TIMEOUT", "seconds a write or linearizable read may wait for quorum"),
    ("--log-format", "LOG_FORMAT", "auto, json or text"),
    ("--advertise-url", "ADVERTISE_URL", "HTTP URL other nodes and clients use to reach this node"),
    (
        "--quorum-grace",
        "QUORUM_GRACE",
        "seconds protocols keep serving without quorum before fencing (default 5, at least 0.5)",
    ),
    (
        "--compaction-entries",
        "COMPACTION_ENTRIES",
        "log entries before a snapshot compacts the journal (default 20000)",
    ),
    (
        "--election-timeout",
        "ELECTION_TIMEOUT",
        "MIN,MAX seconds a follower waits for the leader before it stands for election "
        f"(default {DEFAULT_ELECTION_TIMEOUT[0]:g},{DEFAULT_ELECTION_TIMEOUT[1]:g}; the same on every node)",
    ),
    ("--audit-interval", "AUDIT_INTERVAL", "seconds between full blade-table audits (default 60)"),
    ("--history-limit", "HISTORY_LIMIT", "changes kept for watch; older revisions answer 410 (default 10000)"),
    (
        "--agent",
        "AGENTS",
        "an agent this node expects, NAME=TABLE[,TABLE...]; repeat the flag, or ';'-separate in the env var",
    ),
    ("--sink-config", "SINK_CONFIG", "TOML file of file sinks: blade tables rendered into files for daemons"),
    ("--agent-timeout", "AGENT_TIMEOUT", "seconds without a report before an agent counts as lost (default 1)"),
    ("--app", "APP", f"the app to run, as module:attribute (default {DEFAULT_APP})"),
    (
        "--header-timeout",
        "HEADER_TIMEOUT",
        "seconds a connection may take to send a complete request head, from connecting or from its last answer"
        " (default 30)",
    ),
    ("--body-timeout", "BODY_TIMEOUT", "seconds a client may take to send a request body (default 30)"),
    ("--max-connections", "MAX_CONNECTIONS", "open HTTP connections per node; more are answered 503 (default 1000)"),
    (
        "--fence-policy",
        "FENCE_POLICY",
        "TOML or JSON file: which protocols and applications depend on which blade tables, and when to fence",
    ),
)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, env, help_text in SETTINGS:
        if flag in ("--peer", "--agent"):
            parser.add_argument(flag, action="append", default=None, help=f"{help_text} [env {ENV_PREFIX}{env}]")
        else:
            parser.add_argument(flag, default=None, help=f"{help_text} [env {ENV_PREFIX}{env}]")
    parser.add_argument(
        "--fault-injection",
        action="store_true",
        default=None,
        help=f"enable /v1/debug endpoints [env {ENV_PREFIX}FAULT_INJECTION=1]",
    )
    parser.add_argument(
        "--join",
        action="store_true",
        default=None,
        help="join the running cluster of --peer: catch up as a non-voting learner until "
        f"POST /v1/cluster/members adds this node [env {ENV_PREFIX}JOIN=1]",
    )


def parse_peer(text: str) -> Peer:
    parts = text.split("=", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"peer {text!r} must look like ID=RAFT_HOST:PORT=HTTP_URL")
    peer_id, raft, http = parts
    _check_host_port(raft, f"peer {peer_id} raft address")
    if not http.startswith(("http://", "https://")):
        raise ConfigError(f"peer {peer_id} HTTP URL {http!r} must start with http:// or https://")
    return Peer(peer_id, raft, http.rstrip("/"))


def _check_host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {value!r} must be host:port")
    return value


def _number(text: str, flag: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{flag} must be between {low:g} and {high:g}")
    return value


def _election_timeout(text: str | None) -> tuple[float, float]:
    if not text:
        return DEFAULT_ELECTION_TIMEOUT
    parts = text.split(",")
    if len(parts) != 2:
        raise ConfigError(f"--election-timeout {text!r} must be MIN,MAX in seconds")
    low = _number(parts[0], "--election-timeout MIN", 0.1, 60)
    high = _number(parts[1], "--election-timeout MAX", 0.1, 60)
    # A narrow range makes split votes (both survivors standing at once) likely.
    if high < low * 1.5:
        raise ConfigError("--election-timeout MAX must be at least 1.5 x MIN")
    return low, high


def parse_node_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Merge flags over ``RDBSYNC_*`` environment variables. Raises ``ConfigError``."""
    env = os.environ if env is None else env

    def pick(name: str, env_name: str) -> str | None:
        value = getattr(args, name, None)
        if value is not None:
            return str(value)
        return env.get(ENV_PREFIX + env_name) or None

    def need(name: str, env_name: str, flag: str) -> str:
        value = pick(name, env_name)
        if not value:
            raise ConfigError(f"{flag} (or {ENV_PREFIX}{env_name}) is required")
        return value

    node_id = need("id", "ID", "--id")
    raft = _check_host_port(need("raft", "RAFT", "--raft"), "--raft")
    http = _check_host_port(need("http", "HTTP", "--http"), "--http")
    data_dir = need("data_dir", "DATA_DIR", "--data-dir")
    peers_raw: Sequence[str] = (
        args.peer
        if getattr(args, "peer", None)
        else [p for p in (env.get(ENV_PREFIX + "PEERS") or "").split(",") if p.strip()]
    )
    peers = tuple(parse_peer(p.strip()) for p in peers_raw)
    if node_id in {p.id for p in peers}:
        raise ConfigError(f"peer list contains this node's own id {node_id!r}")
    cluster = pick("cluster_address", "CLUSTER_ADDRESS")
    if cluster:
        _check_host_port(cluster, "--cluster-address")
    secret = env.get(ENV_PREFIX + "SECRET") if getattr(args, "secret_file", None) is None else None
    secret_file = pick("secret_file", "SECRET_FILE")
    if not secret and secret_file:
        try:
            with open(secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the cluster secret from {secret_file}: {exc.strerror}") from exc
    if not secret:
        raise ConfigError(
            "a cluster secret is required for Raft traffic: --secret-file, "
            f"{ENV_PREFIX}SECRET_FILE or {ENV_PREFIX}SECRET"
        )
    timeout_text = pick("request_timeout", "REQUEST_TIMEOUT") or "5"
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise ConfigError(f"--request-timeout {timeout_text!r} is not a number") from None
    if not 0.1 <= timeout <= 300:
        raise ConfigError("--request-timeout must be between 0.1 and 300 seconds")
    history_text = pick("history_limit", "HISTORY_LIMIT") or "10000"
    if not history_text.isdigit() or not 1 <= int(history_text) <= 10_000_000:
        raise ConfigError("--history-limit must be an integer between 1 and 10000000")
    audit = _number(pick("audit_interval", "AUDIT_INTERVAL") or "60", "--audit-interval", 0.05, 86400)
    # Below ~0.5 s a protocol would fence between two ordinary worker iterations.
    grace = _number(pick("quorum_grace", "QUORUM_GRACE") or "5", "--quorum-grace", MIN_QUORUM_GRACE, 3600)
    compaction = _number(pick("compaction_entries", "COMPACTION_ENTRIES") or "20000", "--compaction-entries", 10, 10**8)
    election = _election_timeout(pick("election_timeout", "ELECTION_TIMEOUT"))
    header_timeout = _number(pick("header_timeout", "HEADER_TIMEOUT") or "30", "--header-timeout", 0.1, 3600)
    body_timeout = _number(pick("body_timeout", "BODY_TIMEOUT") or "30", "--body-timeout", 0.1, 3600)
    max_connections = _number(pick("max_connections", "MAX_CONNECTIONS") or "1000", "--max-connections", 1, 10**6)
    log_format = pick("log_format", "LOG_FORMAT") or "auto"
    if log_format not in ("auto", "json", "text"):
        raise ConfigError("--log-format must be auto, json or text")
    fault = bool(getattr(args, "fault_injection", None)) or env.get(ENV_PREFIX + "FAULT_INJECTION", "") in (
        "1",
        "true",
        "yes",
    )
    join = bool(getattr(args, "join", None)) or env.get(ENV_PREFIX + "JOIN", "") in ("1", "true", "yes")
    if join and not peers:
        raise ConfigError("--join needs the cluster's members as --peer")
    app_spec = pick("app", "APP") or DEFAULT_APP
    try:
        app = load_app(app_spec)
    except AppError as exc:
        raise ConfigError(str(exc)) from None
    policy_file = pick("fence_policy", "FENCE_POLICY")
    policy = load_fence_policy(policy_file, grace, app) if policy_file else policy_of(app, grace)
    agent_specs = list(getattr(args, "agent", None) or [])
    if not agent_specs and env.get(ENV_PREFIX + "AGENTS"):
        agent_specs = [s for s in env[ENV_PREFIX + "AGENTS"].split(";") if s.strip()]
    try:
        agents = parse_agents(agent_specs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    unknown = sorted({t for held in agents.values() for t in held} - {b.name for b in app.blades})
    if unknown:
        raise ConfigError(f"--agent names unknown blade table(s) {unknown}")
    sink_file = pick("sink_config", "SINK_CONFIG")
    try:
        sinks = tuple(load_sink_config(sink_file)) if sink_file else ()
    except SinkConfigError as exc:
        raise ConfigError(str(exc)) from None
    clash = sorted({s.name for s in sinks} & set(agents))
    if clash:
        raise ConfigError(f"sink(s) {clash} have the name of an --agent")
    unknown = sorted({t for s in sinks for t in s.tables} - {b.name for b in app.blades})
    if unknown:
        raise ConfigError(f"--sink-config names unknown blade table(s) {unknown}")
    agent_timeout = _number(pick("agent_timeout", "AGENT_TIMEOUT") or "1", "--agent-timeout", 0.1, 60)
    return NodeConfig(
        agents=agents,
        agent_timeout=agent_timeout,
        sinks=sinks,
        id=node_id,
        raft_address=raft,
        http_address=http,
        data_dir=data_dir,
        secret=secret,
        peers=peers,
        cluster_address=cluster,
        api_token=pick("api_token", "API_TOKEN"),
        request_timeout=timeout,
        log_format=log_format,
        fault_injection=fault,
        join=join,
        advertise_url=(pick("advertise_url", "ADVERTISE_URL") or "").rstrip("/"),
        history_limit=int(history_text),
        audit_interval=audit,
        compaction_entries=int(compaction),
        election_timeout=election,
        fence_policy=policy,
        app=app,
        app_spec=app_spec,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=int(max_connections),
    )


def policy_relaxations(policy: FencePolicy) -> list[str]:
    """What in ``policy`` lets consumers keep serving from a table whose resync failed
    (a deliberate choice; the node logs it at start-up)."""
    notes = []
    if policy.failures_to_fence > 1:
        notes.append(f"consumers keep serving through {policy.failures_to_fence - 1} failed resync(s) in a row")
    if policy.fence_after_seconds > 0 and policy.failures_to_fence > 1:
        notes.append(f"...or for up to {policy.fence_after_seconds:g}s of failing")
    return notes


def load_fence_policy(path: str, quorum_grace: float, app: App | None = None) -> FencePolicy:
    """Read a fencing policy file (``.toml`` or ``.json``). Raises ``ConfigError`` saying
    what is wrong: unreadable file, bad syntax, bad field, or a built-in data-plane
    protocol that would no longer depend on a table it reads."""
    doc: Any
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as fb:
                doc = tomllib.load(fb)
        elif path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        else:
            raise ConfigError(f"--fence-policy {path!r}: the file name must end in .toml or .json")
    except OSError as exc:
        raise ConfigError(f"cannot read the fencing policy {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"the fencing policy {path} is not valid {path.rsplit('.', 1)[-1].upper()}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"the fencing policy {path} must be a table/object at the top level")
    app = _default_app() if app is None else app
    known = sorted(b.name for b in app.blades)
    try:
        policy = policy_from_document(
            doc, known_tables=known, quorum_grace=quorum_grace, base=policy_of(app, quorum_grace)
        )
    except PolicyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for protocol, reads in data_plane_reads(app).items():
        missing = sorted(reads - policy.dependencies.get(protocol, frozenset()))
        if missing:
            # Serving from a table that may have failed would break "never serve from
            # config that failed to sync": refuse the policy instead.
            raise ConfigError(
                f"{path}: {protocol} answers from {sorted(reads)}; its node-wide 'tables' must include {missing}"
            )
    return policy
