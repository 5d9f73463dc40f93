"""The seeded fault schedule and its executor.

``schedule(seed, duration, ...)`` is pure: the same seed gives the same list of faults
(kinds, start times, durations and target choices). Targets like "the leader" are
resolved when the fault starts.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from chaos._apps import ONTAP, AppModel
from chaos._cluster import REPO, ChaosCluster, ChaosNode, http
from chaos._disk import SmallDisk

PROCESS_FAULTS = ("kill_restart", "kill_leader", "pause", "pause_leader", "pause_minority")
RESYNC_FAULTS = ("resync_error", "resync_hang", "tamper")
NET_FAULTS = ("partition_one", "partition_majority", "partition_bridge", "packet_loss")
#: Storage faults: the whole cluster killed at once; one node's data directory full
#: (needs ``SmallDisk``); a snapshot or journal damaged while the node is down.
STORAGE_FAULTS = ("kill_all", "disk_full", "corrupt_restart")
#: A node restarted with a failpoint that kills it at one step of its next compaction
#: (needs rdb's failpoints, ``RDBSYNC_FAILPOINTS``).
COMPACTION_FAULTS = ("compaction_crash",)
#: Remove a member, wipe it, rejoin it as a learner (--join) and promote it, with a
#: kill or a partition of another node during the change (five nodes).
MEMBERSHIP_FAULTS = ("member_cycle",)
ALL_FAULTS = PROCESS_FAULTS + RESYNC_FAULTS + NET_FAULTS + STORAGE_FAULTS + COMPACTION_FAULTS + MEMBERSHIP_FAULTS
#: Window lengths (s) of kinds that need longer than the default 1.5-5 s.
_WINDOW = {
    "kill_all": (2.0, 5.0),
    "disk_full": (4.0, 8.0),
    "corrupt_restart": (5.0, 8.0),
    "compaction_crash": (4.0, 8.0),
    "member_cycle": (4.0, 8.0),
}
#: The compaction steps a ``compaction_crash`` can stop at (rdb/_failpoints.py): those
#: every compaction passes. journal.reclaim.* are left out: a reclaim needs 64 MiB of
#: compacted journal (rdb/_journal.py RECLAIM_BYTES), which no chaos run reaches.
COMPACTION_FAILPOINTS = (
    "snapshot.before_rename",
    "snapshot.after_rename",
    "journal.compact.before_header",
    "journal.compact.after_header",
)
#: What the node logs when it stops on a failed write (rdb/_journal.py ``fail_stop``)
#: and when it refuses its data files (node/cli.py).
FAIL_STOP_MESSAGE = "stopping this node"
REFUSAL_MESSAGE = "refuses to start"
SNAPSHOT_FILE = "raft.snapshot"
JOURNAL_FILE = "raft.journal"
HANG_DETECTION_SECONDS = 1.2  # the node's resync action timeout (1 s) plus margin


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    start: float
    duration: float
    pick: int  # which node (index into sorted ids), or a table index, as the kind needs
    extra: int  # a second choice (table, loss percent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "start": round(self.start, 3),
            "duration": round(self.duration, 3),
            "pick": self.pick,
            "extra": self.extra,
        }


def available_kinds(*, network: bool, disk: bool = False, failpoints: bool = False, nodes: int = 3) -> list[str]:
    """Every fault kind this run can inject, in ``ALL_FAULTS`` order."""
    kinds = list(PROCESS_FAULTS + RESYNC_FAULTS) + (list(NET_FAULTS) if network else [])
    kinds += [k for k in STORAGE_FAULTS if k != "disk_full" or disk]
    kinds += list(COMPACTION_FAULTS) if failpoints else []
    kinds += list(MEMBERSHIP_FAULTS) if nodes >= 5 else []
    return kinds


def schedule(
    seed: int,
    duration: float,
    *,
    network: bool,
    warmup: float = 3.0,
    kinds: Sequence[str] | None = None,
    round_robin: bool = False,
) -> list[PlannedFault]:
    """A deterministic fault plan for a run of ``duration`` seconds: kinds drawn at
    random from ``kinds`` (default: the process, resync and, with ``network``, network
    faults), or with ``round_robin`` taken in turn in the order given, so a short run
    with a chosen mix injects every kind of it (the first ones first)."""
    rng = random.Random(seed)
    default = list(PROCESS_FAULTS + RESYNC_FAULTS) + (list(NET_FAULTS) if network else [])
    pool = list(kinds) if kinds is not None else default
    plan: list[PlannedFault] = []
    t = warmup
    while pool:
        kind = pool[len(plan) % len(pool)] if round_robin else rng.choice(pool)
        low, high = _WINDOW.get(kind, (1.5, 5.0))
        fault_duration = rng.uniform(low, high)
        if t + fault_duration > duration - 1.0:
            break
        plan.append(PlannedFault(kind, t, fault_duration, rng.randrange(1000), rng.randrange(1000)))
        t += fault_duration + rng.uniform(1.0, 3.0)
    return plan


def compaction_entries(seed: int) -> int | None:
    """The ``--compaction-entries`` of a run: in two seeds of three, small enough (50-400
    entries, a few seconds of load) that compactions fall inside kill windows; otherwise
    None (the node's default)."""
    rng = random.Random(f"compaction-{seed}")
    return rng.choice((50, 100, 200, 400)) if rng.random() < 2 / 3 else None


def failpoints_available() -> bool:
    """rdb has the compaction failpoints (``RDBSYNC_FAILPOINTS``). Read from the source,
    not imported: the harness never imports the product."""
    try:
        with open(os.path.join(REPO, "rdb", "_failpoints.py")) as f:
            text = f.read()
    except OSError:
        return False
    return all(f'"{name}"' in text for name in COMPACTION_FAILPOINTS)


@dataclass
class FaultRecord:
    kind: str
    start: float
    end: float | None
    target: list[str]
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "target": self.target,
            "detail": self.detail,
        }


class FaultRunner:
    """Carries out a plan against a cluster; records what actually happened."""

    def __init__(
        self,
        cluster: ChaosCluster,
        plan: list[PlannedFault],
        now: Any,
        stop: threading.Event,
        model: AppModel = ONTAP,
        *,
        disk: SmallDisk | None = None,
        disk_node: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.model = model
        self.plan = plan
        self.now = now
        self.stop = stop
        self.records: list[FaultRecord] = []
        self.fault_windows: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self.ids = sorted(cluster.nodes)
        self.disk = disk  # the small filesystem holding disk_node's data directory
        self.disk_node = disk_node
        self.probes = 0

    def _node(self, pick: int) -> str:
        return self.ids[pick % len(self.ids)]

    def _leader_or(self, pick: int) -> str:
        return self.cluster.leader() or self._node(pick)

    def _run(self) -> None:
        # A heal that takes long (a rejoin, a whole cluster restarting) delays the rest
        # of the plan by as much, so every fault keeps its window and its healthy gap.
        lag = 0.0
        for fault in self.plan:
            while self.now() < fault.start + lag:
                if self.stop.wait(0.05):
                    return
            record = self._begin(fault)
            self.records.append(record)
            end_at = max(fault.start + lag, record.start) + fault.duration
            while self.now() < end_at and not self.stop.is_set():
                time.sleep(0.05)
            self._end(record)
            if self.stop.is_set():
                return
            lag = max(lag, self.now() - (fault.start + fault.duration))

    def _begin(self, fault: PlannedFault) -> FaultRecord:
        c = self.cluster
        kind = fault.kind
        start = self.now()
        if kind in _NEW_KINDS:
            return _NEW_KINDS[kind][0](self, fault, start)
        if kind in ("kill_restart", "kill_leader"):
            target = [self._leader_or(fault.pick) if kind == "kill_leader" else self._node(fault.pick)]
            c.kill(target[0])
            return FaultRecord(kind, start, None, target)
        if kind in ("pause", "pause_leader"):
            target = [self._leader_or(fault.pick) if kind == "pause_leader" else self._node(fault.pick)]
            c.pause(target[0])
            return FaultRecord(kind, start, None, target)
        if kind == "pause_minority":
            minority = (len(self.ids) - 1) // 2
            first = fault.pick % len(self.ids)
            target = [self.ids[(first + i) % len(self.ids)] for i in range(minority)]
            for nid in target:
                c.pause(nid)
            return FaultRecord(kind, start, None, target)
        if kind in ("resync_error", "resync_hang"):
            nid = self._node(fault.pick)
            tables = self.model.blade_tables
            table = tables[fault.extra % len(tables)]
            mode = "error" if kind == "resync_error" else "hang"
            status, _ = http("POST", c.nodes[nid].url + "/v1/debug/faults", {"table": table, "mode": mode})
            acked = self.now()
            record = FaultRecord(kind, start, None, [nid], {"table": table, "injected": status == 200})
            if status == 200:
                # The failure is detected at once for an error, after the action timeout
                # (1 s) for a hang: the window in which answers must be 503 starts then.
                detect = 0.0 if mode == "error" else HANG_DETECTION_SECONDS
                self.fault_windows.append({"node": nid, "table": table, "start": acked + detect, "end": None})
            return record
        if kind == "tamper":
            nid = self._node(fault.pick)
            targets = self.model.tamper_targets
            table, key = targets[fault.extra % len(targets)]
            status, _ = http(
                "POST", c.nodes[nid].url + "/v1/debug/tamper", {"table": table, "key": key, "row": {"tampered": True}}
            )
            return FaultRecord(kind, start, self.now(), [nid], {"table": table, "key": key, "ok": status == 200})
        net = c.net
        assert net is not None
        if kind == "partition_one":
            lone = self._node(fault.pick)
            cuts = {(lone, o) for o in self.ids if o != lone}
            net.apply(cuts)
            return FaultRecord(kind, start, None, [lone], {"cuts": sorted(map(list, cuts))})
        if kind == "partition_majority":
            minority = (len(self.ids) - 1) // 2 or 1
            first = fault.pick % len(self.ids)
            small = [self.ids[(first + i) % len(self.ids)] for i in range(minority)]
            cuts = {(a, b) for a in small for b in self.ids if b not in small}
            net.apply(cuts)
            return FaultRecord(kind, start, None, small, {"cuts": sorted(map(list, cuts))})
        if kind == "partition_bridge":
            bridge = self._node(fault.pick)
            others = [n for n in self.ids if n != bridge]
            half = len(others) // 2
            left, right = others[:half], others[half:]
            cuts = {(a, b) for a in left for b in right}
            net.apply(cuts)
            return FaultRecord(kind, start, None, [bridge], {"left": left, "right": right})
        if kind == "packet_loss":
            percent = 10 + fault.extra % 21
            net.apply(set(), percent)
            return FaultRecord(kind, start, None, list(self.ids), {"loss_percent": percent})
        raise ValueError(f"unknown fault kind {kind}")

    def _end(self, record: FaultRecord) -> None:
        c = self.cluster
        if record.end is not None:
            return
        kind = record.kind
        if kind in _NEW_KINDS:
            _NEW_KINDS[kind][1](self, record)
        elif kind in ("kill_restart", "kill_leader"):
            c.start(record.target[0])
        elif kind in ("pause", "pause_leader", "pause_minority"):
            for nid in record.target:
                c.resume(nid)
        elif kind in ("resync_error", "resync_hang"):
            nid = record.target[0]
            for window in self.fault_windows:
                if window["node"] == nid and window["end"] is None:
                    window["end"] = self.now()  # the window closes when the clear is *requested*
            http("DELETE", c.nodes[nid].url + "/v1/debug/faults")
        elif kind.startswith("partition") or kind == "packet_loss":
            assert c.net is not None
            c.net.heal()
        record.end = self.now()

    def heal_all(self) -> None:
        """Undo every fault still in force (after the run, or on interrupt)."""
        for record in self.records:
            if record.end is None:
                self._end(record)
        c = self.cluster
        for nid, node in c.nodes.items():
            if node.paused:
                c.resume(nid)
            if not node.alive:
                c.start(nid)
            http("DELETE", node.url + "/v1/debug/faults", timeout=2)
        for window in self.fault_windows:
            if window["end"] is None:
                window["end"] = self.now()
        if c.net is not None:
            c.net.heal()


# ------------------------------------------------------------------ storage faults
#
# Each new kind is a (begin, end) pair of functions of the runner: begin injects and
# returns the record, end heals and writes in ``record.detail`` what the fault-outcome
# checker (``chaos._checkers.check_fault_outcomes``) judges.


def _log_size(node: ChaosNode) -> int:
    try:
        return os.path.getsize(node.log_path or "")
    except OSError:
        return 0


def _log_since(node: ChaosNode, offset: int) -> str:
    if node.log_path is None:
        return ""
    try:
        with open(node.log_path, "rb") as f:
            f.seek(offset)
            return f.read(4 << 20).decode(errors="replace")
    except OSError:
        return ""


def _wait_exit(node: ChaosNode, timeout: float, ready_url: str | None = None) -> str:
    """``"exited"``, ``"ready"`` (its /readyz said 200 first, when ``ready_url``) or "running"."""
    deadline = time.monotonic() + timeout
    while True:
        if node.proc is None or node.proc.poll() is not None:
            return "exited"
        if ready_url is not None and http("GET", ready_url, timeout=1)[0] == 200:
            return "ready"
        if time.monotonic() >= deadline:
            return "running"
        time.sleep(0.1)


def _exit_code(node: ChaosNode) -> int | None:
    return None if node.proc is None else node.proc.poll()


def _begin_kill_all(r: FaultRunner, fault: PlannedFault, start: float) -> FaultRecord:
    c = r.cluster
    for node in c.nodes.values():  # every SIGKILL first, then the waits: all at once
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
    for nid in r.ids:
        c.kill(nid)
    return FaultRecord("kill_all", start, None, list(r.ids))


def _end_kill_all(r: FaultRunner, record: FaultRecord) -> None:
    for nid in r.ids:
        r.cluster.start(nid)
    record.detail["ready_after"] = r.cluster.wait_ready(60)


def _begin_disk_full(r: FaultRunner, fault: PlannedFault, start: float) -> FaultRecord:
    assert r.disk is not None and r.disk_node is not None
    node = r.cluster.nodes[r.disk_node]
    record = FaultRecord("disk_full", start, None, [node.id], {"log_offset": _log_size(node)})
    record.detail["injected"] = node.alive
    record.detail["was_leader"] = r.cluster.leader() == node.id
    record.detail["filled_bytes"] = r.disk.fill()
    return record


def _end_disk_full(r: FaultRunner, record: FaultRecord) -> None:
    assert r.disk is not None
    c = r.cluster
    node = c.nodes[record.target[0]]
    # Writes never stop in a chaos run, so a node with a full disk must stop soon. Space
    # the node frees meanwhile (an older snapshot replaced by a newer one) goes back to
    # the ballast: a follower once wrote 10 s of entries into it and looked unharmed.
    deadline = time.monotonic() + 10.0
    while (outcome := _wait_exit(node, 0.5)) == "running" and time.monotonic() < deadline:
        record.detail["filled_bytes"] += r.disk.fill()
    record.detail["stopped"] = outcome == "exited"
    record.detail["exit_code"] = _exit_code(node)
    record.detail["said_why"] = FAIL_STOP_MESSAGE in _log_since(node, record.detail.pop("log_offset"))
    c.kill(node.id)
    r.disk.free()
    c.start(node.id)
    record.detail["ready_after"] = c.wait_ready(60, [node.id])


#: rdb's journal header (read here, not imported: the harness never imports the product):
#: magic, the file offset of the first live record, the first index, a CRC.
_JOURNAL_V2_MAGIC = b"RDBJ\x00\x02\n\x00"
_JOURNAL_HEADER = struct.Struct("<8sQQI4x")
_JOURNAL_RECORD = struct.Struct("<IIQQ")  # payload length, crc32, index, term; the payload follows


def _live_records_start(journal: str, size: int) -> int:
    """The offset of the journal's first live record: compaction only moves the header's
    pointer, and the records before it (covered by the snapshot) are never read again,
    so damage there is no damage. 0 if the header cannot say."""
    with open(journal, "rb") as f:
        head = f.read(_JOURNAL_HEADER.size)
    if len(head) < _JOURNAL_HEADER.size:
        return 0
    magic, start, _first, _crc = _JOURNAL_HEADER.unpack(head)
    return int(start) if magic == _JOURNAL_V2_MAGIC and start < size else 0


def _committed_live_records(journal: str, size: int) -> list[tuple[int, int]] | None:
    """``(offset, payload length)`` of the journal's live records at or below the commit
    index the node recorded in its meta file: damage there must make it refuse to start
    (damage above it is a torn tail, cut by design). None if the file has no header.
    Reads rdb's record framing (payload length, crc32, index, term) and msgpack meta."""
    start = _live_records_start(journal, size)
    if start == 0:
        return None
    try:
        with open(journal + ".meta", "rb") as f:
            meta = msgpack.unpackb(f.read(), raw=False)
        commit = int(meta.get("commit_index", 0)) if isinstance(meta, dict) else 0
    except (OSError, ValueError, TypeError, msgpack.UnpackException):
        commit = 0
    records: list[tuple[int, int]] = []
    with open(journal, "rb") as f:
        offset = start
        while offset + _JOURNAL_RECORD.size <= size:
            f.seek(offset)
            length, _crc, index, _term = _JOURNAL_RECORD.unpack(f.read(_JOURNAL_RECORD.size))
            if index > commit or offset + _JOURNAL_RECORD.size + length > size:
                break
            records.append((offset, length))
            offset += _JOURNAL_RECORD.size + length
    return records


def _corrupt(node: ChaosNode, choice: int) -> dict[str, Any]:
    """Damage the stopped node's snapshot (cut in half) or journal (one byte flipped in
    the middle live record at or below the commit index it recorded). The node must
    refuse to start on either."""
    snapshot = os.path.join(node.data_dir, SNAPSHOT_FILE)
    journal = os.path.join(node.data_dir, JOURNAL_FILE)
    have_snapshot = os.path.exists(snapshot) and os.path.getsize(snapshot) > 16
    have_journal = os.path.exists(journal) and os.path.getsize(journal) > 4096
    if have_snapshot and (choice % 2 == 0 or not have_journal):
        size = os.path.getsize(snapshot)
        os.truncate(snapshot, size // 2)
        return {"file": SNAPSHOT_FILE, "damage": f"truncated from {size} to {size // 2} bytes"}
    if have_journal:
        size = os.path.getsize(journal)
        records = _committed_live_records(journal, size)
        if records is None:  # no header to read: a third of the way in
            offset = size // 3
        elif not records:
            return {"file": None, "damage": "no live journal record at or below the recorded commit index"}
        else:
            record, length = records[len(records) // 2]
            offset = record + _JOURNAL_RECORD.size + length // 2 if length else record + 4  # payload, else its crc
        with open(journal, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        return {"file": JOURNAL_FILE, "damage": f"byte {offset} of {size} flipped"}
    return {"file": None, "damage": "nothing to damage (no snapshot, journal under 4 KiB)"}


def _begin_corrupt(r: FaultRunner, fault: PlannedFault, start: float) -> FaultRecord:
    c = r.cluster
    nid = r._node(fault.pick)
    node = c.nodes[nid]
    c.kill(nid)
    damage = _corrupt(node, fault.extra)
    record = FaultRecord("corrupt_restart", start, None, [nid], {**damage, "injected": damage["file"] is not None})
    if damage["file"] is None:
        c.start(nid)
        return record
    offset = _log_size(node)
    c.start(nid)
    outcome = _wait_exit(node, 20.0, ready_url=node.url + "/readyz")
    record.detail["refused"] = outcome == "exited" and _exit_code(node) not in (0, None)
    record.detail["start_outcome"] = outcome
    record.detail["exit_code"] = _exit_code(node)
    said = _log_since(node, offset)
    record.detail["said_why"] = REFUSAL_MESSAGE in said and str(damage["file"]) in said
    record.detail["served"] = _probe_write(r, exclude={nid})
    return record


def _end_corrupt(r: FaultRunner, record: FaultRecord) -> None:
    nid = record.target[0]
    if not record.detail.get("injected"):
        return
    record.detail["rejoin"] = rejoin(r.cluster, nid, deadline=time.monotonic() + 120)
    record.detail["rejoined"] = record.detail["rejoin"]["rejoined"]


def _probe_write(r: FaultRunner, exclude: set[str], within: float = 20.0) -> bool:
    """One write through any other live node, retried for ``within`` s: is the cluster serving?"""
    r.probes += 1
    key = f"chaos/probe-{r.probes}"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for nid in r.ids:
            node = r.cluster.nodes[nid]
            if nid in exclude or not node.alive or node.paused:
                continue
            if http("PUT", f"{node.url}/v1/kv/{key}", {"value": r.probes}, timeout=5)[0] == 200:
                return True
        time.sleep(0.2)
    return False


def _begin_compaction_crash(r: FaultRunner, fault: PlannedFault, start: float) -> FaultRecord:
    c = r.cluster
    nid = r._node(fault.pick)
    node = c.nodes[nid]
    point = COMPACTION_FAILPOINTS[fault.extra % len(COMPACTION_FAILPOINTS)]
    c.kill(nid)
    record = FaultRecord("compaction_crash", start, None, [nid], {"failpoint": point, "log_offset": _log_size(node)})
    # The launcher has one environment for every node: armed for this one start only.
    plain = c.env
    c.env = {**plain, "RDBSYNC_FAILPOINTS": f"{point}=crash"}
    try:
        c.start(nid)
    finally:
        c.env = plain
    return record


def _end_compaction_crash(r: FaultRunner, record: FaultRecord) -> None:
    c = r.cluster
    node = c.nodes[record.target[0]]
    point = record.detail["failpoint"]
    # A restarted node compacts within seconds at a small threshold, not at once:
    # give it up to 20 s more than the window.
    exited = _wait_exit(node, 20.0) == "exited"
    said = _log_since(node, record.detail.pop("log_offset"))
    record.detail["fired"] = exited and f"failpoint {point}: crash" in said
    record.detail["injected"] = record.detail["fired"]
    c.kill(node.id)
    c.start(node.id)
    record.detail["ready_after"] = c.wait_ready(60, [node.id])


# ------------------------------------------------------------------ membership


def _live(c: ChaosCluster, exclude: set[str]) -> list[str]:
    return [nid for nid, n in sorted(c.nodes.items()) if n.alive and not n.paused and nid not in exclude]


def _members(c: ChaosCluster, exclude: set[str]) -> set[str] | None:
    """The member ids as a live node (with a leader) reports them; None if none answers."""
    for nid in _live(c, exclude):
        status, body = http("GET", c.nodes[nid].url + "/v1/status", timeout=2)
        if status == 200 and body.get("leader"):
            return {str(m["id"]) for m in body["members"]}
    return None


def remove_member(c: ChaosCluster, nid: str, *, avoid: set[str], deadline: float) -> dict[str, Any]:
    """DELETE /v1/cluster/members/{nid} through a live node, retried until it is out or
    ``deadline`` (monotonic); a 409 (another change holds the lease) or 503 is retried."""
    answers: list[Any] = []
    while time.monotonic() < deadline:
        members = _members(c, avoid | {nid})
        if members is not None and nid not in members:
            return {"removed": True, "answers": answers[-5:]}
        for via in _live(c, avoid | {nid})[:1] or []:
            status, body = http("DELETE", f"{c.nodes[via].url}/v1/cluster/members/{nid}", timeout=20)
            answers.append([via, status, (body or {}).get("error", {}).get("code") if status != 200 else "ok"])
        time.sleep(0.3)
    return {"removed": False, "answers": answers[-5:]}


def add_member(c: ChaosCluster, nid: str, *, avoid: set[str], deadline: float) -> dict[str, Any]:
    """POST /v1/cluster/members for the learner ``nid`` through a live member, retried
    (409 lease held, 503 not caught up or no quorum, no answer) until it is a member."""
    node = c.nodes[nid]
    body = {"id": nid, "raft_address": node.raft, "http_url": node.url}
    answers: list[Any] = []
    voting: Any = None
    while time.monotonic() < deadline:
        members = _members(c, avoid | {nid})
        if members is not None and nid in members:
            return {"added": True, "voting": voting, "answers": answers[-5:]}
        for via in _live(c, avoid | {nid})[:1]:
            status, answer = http("POST", f"{c.nodes[via].url}/v1/cluster/members", body, timeout=30)
            if status == 200:
                voting = answer.get("voting")
            answers.append([via, status, (answer or {}).get("error", {}).get("code") if status != 200 else "ok"])
        time.sleep(0.3)
    return {"added": False, "voting": voting, "answers": answers[-5:]}


def _wait_role(c: ChaosCluster, nid: str, roles: tuple[str, ...], deadline: float) -> bool:
    while time.monotonic() < deadline:
        status, body = http("GET", c.nodes[nid].url + "/v1/status", timeout=2)
        if status == 200 and body.get("role") in roles and body.get("leader"):
            return True
        time.sleep(0.2)
    return False


def wipe(node: ChaosNode) -> None:
    """Empty the node's data directory (the directory itself may be a mount point)."""
    os.makedirs(node.data_dir, exist_ok=True)
    for name in os.listdir(node.data_dir):
        path = os.path.join(node.data_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def rejoin(c: ChaosCluster, nid: str, *, deadline: float, avoid: Collection[str] = ()) -> dict[str, Any]:
    """Bring a node whose data is unusable (or that is to be replaced) back safely:
    remove it from the membership, wipe its data, start it as a learner (--join), add it
    back (it votes once it has caught up), and wait until it is ready.

    A voter must not simply restart with empty data while the cluster still lists it:
    it would have forgotten entries it acknowledged (a commit counted on it can then be
    outvoted by nodes that never had it) and its vote in the current term."""
    c.kill(nid)
    steps: dict[str, Any] = {"remove": remove_member(c, nid, avoid=set(avoid), deadline=deadline)}
    node = c.nodes[nid]
    wipe(node)
    if "--join" not in node.extra_args:
        node.extra_args.append("--join")
    c.start(nid)
    steps["learner"] = _wait_role(c, nid, ("learner",), deadline)
    steps["add"] = add_member(c, nid, avoid=set(avoid), deadline=deadline)
    steps["voter"] = _wait_role(c, nid, ("follower", "leader"), deadline)
    steps["ready"] = c.wait_ready(max(1.0, deadline - time.monotonic()), [nid])
    steps["rejoined"] = bool(steps["remove"]["removed"] and steps["add"]["added"] and steps["voter"] and steps["ready"])
    return steps


def _begin_member_cycle(r: FaultRunner, fault: PlannedFault, start: float) -> FaultRecord:
    """Remove a member under a concurrent fault on another node; ``_end`` wipes it,
    rejoins it as a learner and promotes it, still under that fault, then heals."""
    c = r.cluster
    nid = r._node(fault.pick)
    others = [n for n in r.ids if n != nid]
    mode = ("kill", "kill_leader", "partition")[fault.extra % 3]
    if mode == "partition" and c.net is None:
        mode = "kill"
    other = others[(fault.extra // 3) % len(others)]
    record = FaultRecord("member_cycle", start, None, [nid], {"under": mode})
    if mode == "kill":
        c.kill(other)
        record.detail["other"] = other
    elif mode == "partition":
        assert c.net is not None
        c.net.apply({(other, o) for o in r.ids if o != other})
        record.detail["other"] = other
    avoid = {other} if mode != "kill_leader" else set()
    record.detail["remove"] = remove_member(c, nid, avoid=avoid, deadline=time.monotonic() + 60)
    c.kill(nid)
    if mode == "kill_leader":
        leader = c.leader()
        if leader is not None and leader != nid:
            c.kill(leader)
            record.detail["other"] = leader
    return record


def _end_member_cycle(r: FaultRunner, record: FaultRecord) -> None:
    c = r.cluster
    nid = record.target[0]
    other = record.detail.get("other")
    avoid = {other} if other and record.detail["under"] == "partition" else set()
    record.detail["rejoin"] = rejoin(c, nid, deadline=time.monotonic() + 120, avoid=avoid)
    record.detail["rejoined"] = record.detail["rejoin"]["rejoined"] and record.detail["remove"]["removed"]
    if other and record.detail["under"] == "partition":
        assert c.net is not None
        c.net.heal()
    elif other:
        c.start(other)
    record.detail["ready_after"] = c.wait_ready(60)


_Begin = Callable[[FaultRunner, PlannedFault, float], FaultRecord]
_End = Callable[[FaultRunner, FaultRecord], None]
_NEW_KINDS: dict[str, tuple[_Begin, _End]] = {
    "kill_all": (_begin_kill_all, _end_kill_all),
    "disk_full": (_begin_disk_full, _end_disk_full),
    "corrupt_restart": (_begin_corrupt, _end_corrupt),
    "compaction_crash": (_begin_compaction_crash, _end_compaction_crash),
    "member_cycle": (_begin_member_cycle, _end_member_cycle),
}
