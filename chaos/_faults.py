"""The seeded fault schedule and its executor.

``schedule(seed, duration, ...)`` is pure: the same seed gives the same list of faults
(kinds, start times, durations and target choices). Targets like "the leader" are
resolved when the fault starts.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from chaos._apps import ONTAP, AppModel
from chaos._cluster import ChaosCluster, http

PROCESS_FAULTS = ("kill_restart", "kill_leader", "pause", "pause_leader", "pause_minority")
RESYNC_FAULTS = ("resync_error", "resync_hang", "tamper")
NET_FAULTS = ("partition_one", "partition_majority", "partition_bridge", "packet_loss")
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


def schedule(seed: int, duration: float, *, network: bool, warmup: float = 3.0) -> list[PlannedFault]:
    """A deterministic fault plan for a run of ``duration`` seconds."""
    rng = random.Random(seed)
    kinds = list(PROCESS_FAULTS + RESYNC_FAULTS) + (list(NET_FAULTS) if network else [])
    plan = []
    t = warmup
    while True:
        fault_duration = rng.uniform(1.5, 5.0)
        if t + fault_duration > duration - 1.0:
            break
        plan.append(PlannedFault(rng.choice(kinds), t, fault_duration, rng.randrange(1000), rng.randrange(1000)))
        t += fault_duration + rng.uniform(1.0, 3.0)
    return plan


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
        self, cluster: ChaosCluster, plan: list[PlannedFault], now: Any, stop: threading.Event, model: AppModel = ONTAP
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

    def _node(self, pick: int) -> str:
        return self.ids[pick % len(self.ids)]

    def _leader_or(self, pick: int) -> str:
        return self.cluster.leader() or self._node(pick)

    def _run(self) -> None:
        for fault in self.plan:
            while self.now() < fault.start:
                if self.stop.wait(0.05):
                    return
            record = self._begin(fault)
            self.records.append(record)
            end_at = fault.start + fault.duration
            while self.now() < end_at and not self.stop.is_set():
                time.sleep(0.05)
            self._end(record)
            if self.stop.is_set():
                return

    def _begin(self, fault: PlannedFault) -> FaultRecord:
        c = self.cluster
        kind = fault.kind
        start = self.now()
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
        if kind in ("kill_restart", "kill_leader"):
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
