"""``rdbsync chaos``: start a cluster, run workloads under a seeded fault schedule for a
bounded time, heal, wait for convergence, check, and write a JSON and HTML report.

Exit status: 0 when every checker passes; 1 when any finds a violation or is
inconclusive; 2 when the run itself could not be carried out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from chaos._agents import AgentFleet, AgentProbe
from chaos._agents import node_flags as agent_node_flags
from chaos._apps import MODELS, ONTAP, AppModel
from chaos._checkers import (
    CheckResult,
    check_agents,
    check_convergence,
    check_dataplane,
    check_fault_outcomes,
    check_linearizability,
    check_set,
)
from chaos._cluster import ChaosCluster, http
from chaos._disk import DiskUnavailable, SmallDisk, enter_mount_namespace
from chaos._faults import (
    ALL_FAULTS,
    SNAPSHOT_FILE,
    FaultRunner,
    available_kinds,
    compaction_entries,
    failpoints_available,
    schedule,
)
from chaos._net import NetLab, NetUnavailable
from chaos._report import write_report
from chaos._workload import (
    ConfigChurn,
    DataPlaneProbe,
    History,
    RegisterWorkload,
    SetWorkload,
    Workload,
)

#: A tampered blade row may be served until the audit (5 s in chaos runs) repairs it.
TAMPER_REPAIR_BOUND_S = 7.0


class ChaosAbort(Exception):
    """The run could not be carried out (cluster never became ready, ...)."""


def progress(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class ConfigLog:
    """Every committed change under tables/, from revision 1, via a resumable watch."""

    events: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True
    error: str | None = None
    next_revision: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)


def watch_config(cluster: ChaosCluster, log: ConfigLog, history: History, stop: threading.Event) -> None:
    """Follow /v1/watch?prefix=tables/ on any live node, resuming from the next revision."""
    ids = sorted(cluster.nodes)
    attempt = 0
    while not stop.is_set():
        node = cluster.nodes[ids[attempt % len(ids)]]
        attempt += 1
        if not node.alive or node.paused:
            stop.wait(0.1)
            continue
        parts = urlsplit(node.url)
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=3) as sock:
                sock.settimeout(12)
                path = f"/v1/watch?prefix=tables/&from_revision={log.next_revision}"
                # HTTP/1.0: no chunked framing inside the event stream.
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: chaos\r\nAccept: text/event-stream\r\n\r\n".encode())
                buf = b""
                header_done = False
                while not stop.is_set():
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if not header_done:
                        if b"\r\n\r\n" not in buf:
                            continue
                        head, buf = buf.split(b"\r\n\r\n", 1)
                        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
                        if " 410 " in status_line:
                            with log.lock:
                                log.complete, log.error = False, "watch history compacted (410)"
                            return
                        if " 200 " not in status_line:
                            break
                        header_done = True
                    buf = _consume_sse(buf, log, history, node.id)
        except OSError:
            pass
        stop.wait(0.1)


def _consume_sse(buf: bytes, log: ConfigLog, history: History, source: str) -> bytes:
    while b"\n\n" in buf:
        block, buf = buf.split(b"\n\n", 1)
        fields: dict[str, str] = {}
        for line in block.decode(errors="replace").splitlines():
            name, sep, value = line.partition(": ")
            if sep and name in ("id", "event", "data"):
                fields[name] = value
        if "data" not in fields or fields.get("event") not in ("put", "delete"):
            continue
        data = json.loads(fields["data"])
        revision = int(data["revision"])
        with log.lock:
            if any(e["revision"] == revision and e["key"] == data["kv"]["key"] for e in log.events[-50:]):
                continue  # re-delivered after a resume
            log.events.append(
                {
                    "revision": revision,
                    "at": history.now(),
                    "key": data["kv"]["key"],
                    "row": data["kv"]["value"] if fields["event"] == "put" else None,
                    "from": source,
                }
            )
            log.next_revision = revision + 1
    return buf


def replay_config(events: list[dict[str, Any]], revision: int, model: AppModel = ONTAP) -> dict[str, dict[str, Any]]:
    """The management tables as the config log says they were at ``revision``."""
    tables: dict[str, dict[str, Any]] = {t: {} for t in model.management_tables}
    for event in events:
        if event["revision"] > revision:
            break
        _, table, key = event["key"].split("/", 2)
        if table not in tables:
            continue
        if event["row"] is None:
            tables[table].pop(key, None)
        else:
            tables[table][key] = event["row"]
    return tables


def targets_for(cluster: ChaosCluster) -> list[str]:
    out = [f"{nid}={node.url}" for nid, node in sorted(cluster.nodes.items())]
    if cluster.shared_url:
        out.append(f"shared={cluster.shared_url}")
    return out


def load_config(cluster: ChaosCluster, model: AppModel = ONTAP) -> None:
    url = cluster.nodes["n1"].url
    for table, key, row in model.base_config(sorted(cluster.nodes)):
        for _ in range(50):
            status, body = http("PUT", f"{url}/v1/tables/{table}/{key}", row, timeout=5)
            if status == 200:
                break
            time.sleep(0.2)
        else:
            raise ChaosAbort(f"cannot load base config {table}/{key}: {status} {body}")


def wait_converged(cluster: ChaosCluster, timeout: float) -> int:
    """Wait until every node's blade tables reflect the committed revision; return it."""
    deadline = time.monotonic() + timeout
    revision = 0
    while time.monotonic() < deadline:
        status, body = http("GET", cluster.nodes["n1"].url + "/v1/kv?prefix=tables/&limit=1", timeout=3)
        if status == 200:
            revision = int(body["revision"])
            done = True
            for node in cluster.nodes.values():
                s, st = http("GET", node.url + "/v1/status", timeout=3)
                if s != 200 or any(
                    t["applied_revision"] < revision or t["state"] != "in_sync" for t in st["tables"].values()
                ):
                    done = False
                    break
            if done:
                return revision
        time.sleep(0.25)
    return revision


def final_state(cluster: ChaosCluster, model: AppModel = ONTAP) -> dict[str, Any]:
    """Committed tables, every node's blades and set contents, read after healing."""
    n1 = cluster.nodes["n1"].url
    committed: dict[str, dict[str, Any]] = {}
    revision = 0
    for table in model.management_tables:
        status, body = http("GET", f"{n1}/v1/tables/{table}?limit=10000", timeout=10)
        if status != 200:
            raise ChaosAbort(f"cannot read committed {table}: {status} {body}")
        committed[table] = body["rows"]
        revision = max(revision, int(body["revision"]))
    blades: dict[str, dict[str, Any]] = {}
    sets: dict[str, dict[str, Any]] = {}
    for nid, node in cluster.nodes.items():
        blades[nid] = {}
        for table, blade in model.blades.items():
            status, body = http("GET", f"{node.url}/v1/blades/{blade}/{table}", timeout=10)
            if status == 200:
                blades[nid][table] = {"revision": body["revision"], "rows": body["rows"]}
        sets[nid] = read_prefix(node.url, "set/")
    return {"committed": committed, "revision": revision, "blades": blades, "sets": sets}


def read_prefix(url: str, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    start = ""
    while True:
        query = f"prefix={prefix}&limit=10000" + (f"&start_after={start}" if start else "")
        status, body = http("GET", f"{url}/v1/kv?{query}", timeout=20)
        if status != 200:
            raise ChaosAbort(f"final read of {prefix} from {url}: {status} {body}")
        for kv in body["kvs"]:
            out[kv["key"]] = {"value": kv["value"], "version": kv["version"]}
        if not body["more"]:
            return out
        start = body["kvs"][-1]["key"]


def fence_events(cluster: ChaosCluster, t0_wall: float) -> list[dict[str, Any]]:
    out = []
    for nid, node in cluster.nodes.items():
        status, body = http("GET", node.url + "/v1/events", timeout=5)
        if status == 200:
            for e in body["events"]:
                if e["type"] in ("fenced", "unfenced", "resync_failed", "quorum_lost", "quorum_regained"):
                    out.append(
                        {
                            "node": nid,
                            "type": e["type"],
                            "at": round(e["at"] - t0_wall, 3),
                            "protocol": e.get("protocol"),
                            "table": e.get("table"),
                        }
                    )
    return sorted(out, key=lambda e: e["at"])


def run(args: argparse.Namespace) -> int:
    # Always a fresh directory: a run must never start from an earlier run's data.
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    base = tempfile.mkdtemp(prefix=f"seed{args.seed}-", dir=args.workdir or None)
    disk_note = "disk_full off (--no-disk)"
    in_mount_ns = False
    if not args.no_disk:
        try:
            enter_mount_namespace()  # first: unshare(2) needs a single-threaded process
            in_mount_ns = True
        except DiskUnavailable as exc:
            disk_note = f"no private mount namespace ({exc}); disk_full faults skipped"
    os.makedirs(args.report, exist_ok=True)
    net: NetLab | None = None
    network_note = "process faults only"
    node_ids = [f"n{i + 1}" for i in range(args.nodes)]
    if not args.no_network:
        try:
            net = NetLab(node_ids)
            net.setup()
            network_note = "network namespaces: partitions and packet loss enabled"
        except NetUnavailable as exc:
            net = None
            network_note = f"network namespaces unavailable ({exc}); running process and resync faults only"
    progress(network_note)
    compaction = args.compaction_entries or compaction_entries(args.seed)
    node_args: tuple[str, ...] = ("--compaction-entries", str(compaction)) if compaction else ()
    model = MODELS[args.app]
    if args.agents:
        node_args += tuple(agent_node_flags(model.agent_table))
    app_flag = None if args.app == ONTAP.spec else args.app
    cluster = ChaosCluster(os.path.join(base, "cluster"), args.nodes, net=net, app=app_flag, node_args=node_args)
    disk: SmallDisk | None = None
    disk_node = node_ids[args.seed % len(node_ids)]
    if in_mount_ns:
        try:
            disk = SmallDisk(os.path.join(base, f"disk-{disk_node}"), args.disk_mb)
            disk.setup()
            cluster.nodes[disk_node].data_dir = disk.data_dir
            disk_note = f"{disk_node}'s data on a {args.disk_mb} MiB tmpfs in a private mount namespace (disk_full)"
        except DiskUnavailable as exc:
            disk = None
            disk_note = f"{exc}; disk_full faults skipped"
    progress(disk_note)
    # A crash at a compaction step needs compactions within seconds: small thresholds only.
    failpoints = failpoints_available() and compaction is not None and compaction <= 1000
    possible = available_kinds(network=net is not None, disk=disk is not None, failpoints=failpoints, nodes=args.nodes)
    unavailable = [k for k in ALL_FAULTS if k not in possible]
    if args.faults:
        wanted = [k.strip() for k in args.faults.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in ALL_FAULTS]
        if unknown:
            progress(f"unknown fault kinds {unknown}; kinds: {', '.join(ALL_FAULTS)}")
            return 2
        skipped = [k for k in wanted if k not in possible]
        if skipped:
            progress(f"fault kinds not possible in this run, skipped: {skipped}")
        kinds = [k for k in wanted if k in possible]
        plan = schedule(args.seed, args.duration, network=net is not None, kinds=kinds, round_robin=True)
    else:
        kinds = possible
        plan = schedule(args.seed, args.duration, network=net is not None, kinds=kinds)
    progress(f"compaction every {compaction or 'default'} entries; fault kinds: {', '.join(kinds)}")
    stop = threading.Event()
    history = History(time.monotonic())
    config_log = ConfigLog()
    faults = FaultRunner(cluster, plan, history.now, stop, model, disk=disk, disk_node=disk_node if disk else None)
    snapshots = SnapshotWatch(cluster, history, stop)
    workloads: list[Workload] = []
    results: list[CheckResult] = []
    fleet = AgentFleet(cluster, model.agent_table, os.path.join(base, "cluster")) if args.agents else None
    t0_wall = time.time()
    interrupted = False

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    watch_stop = threading.Event()
    try:
        progress(
            f"seed {args.seed}, {args.nodes} nodes, {args.duration:.0f}s, {len(plan)} planned faults; data in {base}"
        )
        cluster.start_all()
        if fleet is not None:
            # A node that expects an agent is not ready until its daemon has loaded.
            fleet.start_all()
            if not fleet.wait_answering(30):
                raise ChaosAbort("the agent daemons did not answer within 30 s")
            progress(f"agents: a daemon per node holding {model.agent_table} (chaos.agent_daemon, batch callbacks)")
        if not cluster.wait_ready(60):
            raise ChaosAbort("the cluster did not become ready within 60 s")
        load_config(cluster, model)
        history.t0 = time.monotonic()
        t0_wall = time.time()
        watcher = threading.Thread(target=watch_config, args=(cluster, config_log, history, watch_stop), daemon=True)
        watcher.start()

        def targets() -> list[str]:
            return targets_for(cluster)

        seed = args.seed
        for p in range(args.register_clients):
            workloads.append(RegisterWorkload("register", p, seed * 1000 + p, history, targets, stop))
        for p in range(2):
            workloads.append(SetWorkload("set", 100 + p, seed * 1000 + 100 + p, history, targets, stop))
        for p in range(2):
            workloads.append(
                DataPlaneProbe("probe", 200 + p, seed * 1000 + 200 + p, history, targets, stop, model=model)
            )
        workloads.append(
            ConfigChurn("churn", 300, seed * 1000 + 300, history, targets, stop, nodes=node_ids, model=model)
        )
        if fleet is not None:
            for p in range(2):
                workloads.append(
                    AgentProbe("agent", 400 + p, seed * 1000 + 400 + p, history, targets, stop, fleet=fleet)
                )
        for w in workloads:
            w.thread.start()
        faults.thread.start()
        snapshots.thread.start()
        next_note = 10.0
        while history.now() < args.duration:
            time.sleep(0.2)
            if history.now() >= next_note:
                done = sum(1 for r in faults.records if r.end is not None)
                progress(
                    f"{history.now():5.0f}s  {len(history.ops)} ops, faults {done}/{len(plan)}, "
                    f"config revision {config_log.next_revision - 1}"
                )
                next_note += 10.0
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: healing and cleaning up")
    except ChaosAbort as exc:
        progress(f"aborted: {exc}")
        stop.set()
        faults.heal_all()
        if fleet is not None:
            fleet.stop_all()
        cluster.stop_all()
        if net is not None:
            net.teardown()
        if disk is not None:
            disk.teardown()
        signal.signal(signal.SIGTERM, previous)
        return 2
    try:
        stop.set()
        for w in workloads:
            w.thread.join(10)
        faults.thread.join(180)  # a rejoin in progress finishes (bounded by its own deadlines)
        progress("healing every fault")
        faults.heal_all()
        if interrupted:
            return 2
        if not cluster.wait_ready(90):
            progress("WARNING: not every node is ready 90 s after healing")
        revision = wait_converged(cluster, 60)
        progress(f"converged at revision {revision}; reading final state")
        state = final_state(cluster, model)
        agents_final = None
        if fleet is not None:
            want = {nid: model.project_table(state["committed"], nid, model.agent_table) for nid in node_ids}
            agents_final = {"want": want, "served": fleet.settle(want, 30)}
        # The watch only sees tables/ keys, so its last revision says little: wait (bounded)
        # until replaying it gives exactly the committed tables read after healing.
        deadline = time.monotonic() + 15
        while (
            replay_config(config_log.events, state["revision"], model) != state["committed"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        watch_stop.set()
        if config_log.complete and replay_config(config_log.events, state["revision"], model) != state["committed"]:
            config_log.complete = False
            config_log.error = f"the watched config log does not replay to the state at revision {state['revision']}"
        progress("checking")
        ops = history.ops
        results.append(
            check_linearizability([o for o in ops if o["kind"] == "register"], time_limit_s=args.check_time_limit)
        )
        results.append(check_set([o for o in ops if o["kind"] == "set"], state["sets"]))
        results.append(check_fault_outcomes([r.to_dict() for r in faults.records]))
        results.append(check_convergence(state["blades"], state["committed"], state["revision"], model=model))
        log_events = list(config_log.events) if config_log.complete else []
        drift_windows = [
            {"node": r.target[0], "start": r.start, "end": r.start + TAMPER_REPAIR_BOUND_S}
            for r in faults.records
            if r.kind == "tamper"
        ]
        results.append(
            check_dataplane(
                [o for o in ops if o["kind"] == "dataplane"],
                log_events,
                faults.fault_windows,
                # An incomplete log judges nothing (every answer is inconclusive), never
                # against an empty config.
                log_complete_through=state["revision"] if config_log.complete else 0,
                drift_windows=drift_windows,
                model=model,
            )
        )
        if fleet is not None:
            results.append(
                check_agents(
                    [o for o in ops if o["kind"] == "agent"],
                    log_events,
                    faults.fault_windows,
                    table=model.agent_table,
                    final=agents_final,
                    log_complete_through=state["revision"] if config_log.complete else 0,
                    drift_windows=drift_windows,
                    model=model,
                )
            )
        events = fence_events(cluster, t0_wall)
    finally:
        stop.set()
        watch_stop.set()
        if fleet is not None:
            fleet.stop_all()
        cluster.stop_all()
        if net is not None:
            net.teardown()
        if disk is not None:
            disk.teardown()
        signal.signal(signal.SIGTERM, previous)
    ok = all(r.status == "pass" for r in results)
    summary = {
        "seed": args.seed,
        "nodes": args.nodes,
        "duration_s": args.duration,
        "network": network_note,
        "result": "pass" if ok else "fail",
        "app": model.spec,
        "repeat": f"scripts/chaos --seed {args.seed} --duration {args.duration:g} --nodes {args.nodes}"
        + ("" if app_flag is None else f" --app {app_flag}")
        + (f" --faults {args.faults}" if args.faults else "")
        + (" --agents" if args.agents else "")
        + (f" --compaction-entries {args.compaction_entries}" if args.compaction_entries else ""),
        "operations": _op_counts(history.ops),
        "faults": {
            "planned": [f.to_dict() for f in plan],
            "executed": [r.to_dict() for r in faults.records],
            "counts": _fault_counts(faults.records),
            "kinds": _kind_table(kinds, plan, faults.records),
            "unavailable": unavailable,
        },
        "storage": {
            "disk": disk_note,
            "compaction_entries": compaction,
            "snapshot_writes": snapshots.summary(faults.records),
        },
        "fault_windows": faults.fault_windows,
        "fence_events": events,
        "config_log": {"events": len(config_log.events), "complete": config_log.complete, "error": config_log.error},
        "checkers": [r.to_dict() for r in results],
    }
    paths = write_report(args.report, summary, history.ops, list(config_log.events))
    for r in results:
        progress(
            f"checker {r.name}: {r.status.upper()}" + (f" ({len(r.violations)} violation(s))" if r.violations else "")
        )
    progress(f"faults: {summary['faults']['counts']}")
    progress(f"report: {paths[0]} and {paths[1]}")
    if not ok:
        progress(f"FAILED; repeat with: {summary['repeat']}")
    return 0 if ok else 1


class SnapshotWatch:
    """Notes every time a node's snapshot file changes (a compaction, or a snapshot
    installed from the leader), sampling every 0.1 s: the report says how many fell
    inside kill windows."""

    KILL_KINDS = ("kill_restart", "kill_leader", "kill_all", "compaction_crash", "corrupt_restart", "member_cycle")

    def __init__(self, cluster: ChaosCluster, history: History, stop: threading.Event) -> None:
        self.cluster = cluster
        self.history = history
        self.stop = stop
        self.events: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def _run(self) -> None:
        seen: dict[str, int] = {}
        while not self.stop.wait(0.1):
            for nid, node in self.cluster.nodes.items():
                try:
                    stamp = os.stat(os.path.join(node.data_dir, SNAPSHOT_FILE)).st_mtime_ns
                except OSError:
                    continue
                if seen.get(nid) != stamp:
                    seen[nid] = stamp
                    self.events.append((self.history.now(), nid))

    def summary(self, records: list[Any]) -> dict[str, Any]:
        windows = [
            (r.start, r.end if r.end is not None else float("inf")) for r in records if r.kind in self.KILL_KINDS
        ]
        inside = sum(1 for t, _ in self.events if any(a <= t <= b for a, b in windows))
        per_node: dict[str, int] = {}
        for _, nid in self.events:
            per_node[nid] = per_node.get(nid, 0) + 1
        return {"total": len(self.events), "per_node": per_node, "inside_kill_windows": inside}


def _kind_table(kinds: list[str], plan: list[Any], records: list[Any]) -> dict[str, dict[str, int]]:
    """Per fault kind of this run: planned, executed and injected (a record whose
    ``detail.injected`` is false executed without injecting anything)."""
    table = {k: {"planned": 0, "executed": 0, "injected": 0} for k in kinds}
    for f in plan:
        table.setdefault(f.kind, {"planned": 0, "executed": 0, "injected": 0})["planned"] += 1
    for r in records:
        row = table.setdefault(r.kind, {"planned": 0, "executed": 0, "injected": 0})
        row["executed"] += 1
        row["injected"] += 0 if r.detail.get("injected", True) is False else 1
    return table


def _op_counts(ops: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for o in ops:
        bucket = counts.setdefault(f"{o['kind']}:{o['f']}", {"ok": 0, "fail": 0, "unknown": 0})
        bucket[o["outcome"]] += 1
    return counts


def _fault_counts(records: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdbsync chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load (default 60)")
    parser.add_argument("--report", default="chaos-report", help="directory for report.json and report.html")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--register-clients", type=int, default=4)
    parser.add_argument("--no-network", action="store_true", help="skip network namespaces (process faults only)")
    parser.add_argument("--check-time-limit", type=float, default=60.0, help="seconds for the linearizability search")
    parser.add_argument("--workdir", default=None, help="where node data and logs go (default: a temp dir)")
    parser.add_argument(
        "--faults",
        default=None,
        help="comma-separated fault kinds, injected in turn (default: every kind this run can do, at random)",
    )
    parser.add_argument(
        "--compaction-entries",
        type=int,
        default=None,
        help="the nodes' --compaction-entries (default: chosen by the seed, small in two seeds of three)",
    )
    parser.add_argument("--no-disk", action="store_true", help="no small filesystem, no disk_full faults")
    parser.add_argument(
        "--agents",
        action="store_true",
        help="run a data-plane daemon (rdbsync.agent) beside every node and check what it serves",
    )
    parser.add_argument("--disk-mb", type=int, default=256, help="size of the small filesystem (MiB, default 256)")
    parser.add_argument(
        "--app",
        choices=sorted(MODELS),
        default=ONTAP.spec,
        help="the app the nodes run (the harness has an independent model of each)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration < 5 or args.duration > 24 * 3600:
        print("rdbsync chaos: --duration must be between 5 s and 24 h", file=sys.stderr)
        return 2
    return run(args)
