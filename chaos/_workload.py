"""Client workloads for the chaos harness. Every operation is recorded with its invoke and
complete time and an outcome: ok, fail (definitely not applied) or unknown."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from chaos._cluster import http

if TYPE_CHECKING:
    from chaos._apps import AppModel

Op = dict[str, Any]


@dataclass
class History:
    """Thread-safe, append-only record of operations (times relative to ``t0``)."""

    t0: float
    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, op: Op) -> None:
        with self.lock:
            op["id"] = len(self.ops)
            self.ops.append(op)


def outcome_of(status: int, body: Any, *, is_write: bool) -> str:
    """ok / fail / unknown from an HTTP answer, per the API's ``applied`` contract."""
    if status == 200:
        return "ok"
    if status == 0:
        return "unknown" if is_write else "fail"
    applied = body.get("error", {}).get("applied") if isinstance(body, dict) else None
    if is_write and (applied == "unknown" or (status >= 500 and applied is not False)):
        return "unknown"
    return "fail"


class Workload:
    """Base: a thread running ``step`` until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        process: int,
        seed: int,
        history: History,
        targets: Callable[[], list[str]],
        stop: threading.Event,
    ) -> None:
        self.name = name
        self.process = process
        self.rng = random.Random(seed)
        self.history = history
        self.targets = targets
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name=f"{name}-{process}", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.step()

    def pick(self) -> tuple[str, str]:
        """(node id or 'shared', base URL)."""
        options = self.targets()
        choice = self.rng.choice(options)
        name, _, url = choice.partition("=")
        return name, url

    def step(self) -> None:
        raise NotImplementedError


class RegisterWorkload(Workload):
    """Per-key registers: read, write unique values, CAS on value; keys rotate so each
    key's history stays small enough for the linearizability search."""

    generation_counter = [0]
    OPS_PER_GENERATION = 120
    KEYS_PER_GENERATION = 4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, Any] = {}
        self.n = 0

    def step(self) -> None:
        counter = RegisterWorkload.generation_counter
        with self.history.lock:
            counter[0] += 1
            generation = counter[0] // self.OPS_PER_GENERATION
        key = f"reg/g{generation}-{self.rng.randrange(self.KEYS_PER_GENERATION)}"
        node, url = self.pick()
        roll = self.rng.random()
        invoke = self.history.now()
        if roll < 0.45:
            status, body = http("GET", f"{url}/v1/kv/{quote(key)}", timeout=3)
            result = body.get("value") if status == 200 else None
            outcome = "ok" if status in (200, 404) else "fail"
            if outcome == "ok":
                self.seen[key] = result
            self.history.record(
                {
                    "process": self.process,
                    "kind": "register",
                    "f": "read",
                    "key": key,
                    "value": None,
                    "node": node,
                    "invoke": invoke,
                    "complete": self.history.now(),
                    "outcome": outcome,
                    "result": result,
                }
            )
            return
        self.n += 1
        new = f"p{self.process}-{self.n}"
        idem = {"Idempotency-Key": uuid.uuid4().hex}
        if roll < 0.75:
            status, body = _put(url, key, new, idem)
            self.history.record(
                {
                    "process": self.process,
                    "kind": "register",
                    "f": "write",
                    "key": key,
                    "value": new,
                    "node": node,
                    "invoke": invoke,
                    "complete": self.history.now(),
                    "outcome": outcome_of(status, body, is_write=True),
                    "result": body.get("revision") if status == 200 else None,
                }
            )
            return
        expected = self.seen.get(key)
        compare = (
            {"key": key, "target": "version", "result": "==", "value": 0}
            if expected is None
            else {"key": key, "target": "value", "result": "==", "value": expected}
        )
        status, body = _txn(
            url, {"compare": [compare], "success": [{"op": "put", "key": key, "value": new}], "failure": []}, idem
        )
        outcome = outcome_of(status, body, is_write=True)
        self.history.record(
            {
                "process": self.process,
                "kind": "register",
                "f": "cas",
                "key": key,
                "value": [expected, new],
                "node": node,
                "invoke": invoke,
                "complete": self.history.now(),
                "outcome": outcome,
                "result": bool(body.get("succeeded")) if status == 200 else None,
            }
        )


def _put(url: str, key: str, value: Any, headers: dict[str, str]) -> tuple[int, Any]:
    return http("PUT", f"{url}/v1/kv/{quote(key)}", {"value": value}, headers=headers)


def _txn(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    return http("POST", f"{url}/v1/txn", body, headers=headers)


def combine_attempts(outcomes: list[str]) -> str:
    """The outcome of one logical write sent several times with the same request id.

    A retry answered "not applied" speaks for that attempt only: an earlier attempt
    whose outcome was unknown may still be applied, so the write stays unknown."""
    if outcomes and outcomes[-1] == "ok":
        return "ok"
    return "unknown" if "unknown" in outcomes else "fail"


class SetWorkload(Workload):
    """No-lost-write set: each add writes a fresh key. An add whose outcome is unknown is
    retried with the same Idempotency-Key (up to 3 tries), which exercises exactly-once
    retries: a key applied twice would show version 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n = 0

    def step(self) -> None:
        self.n += 1
        key = f"set/p{self.process}-{self.n}"
        node, url = self.pick()
        invoke = self.history.now()
        idem = {"Idempotency-Key": uuid.uuid4().hex}
        attempts = []
        for _attempt in range(3):
            status, body = _put(url, key, self.n, idem)
            attempts.append(outcome_of(status, body, is_write=True))
            if attempts[-1] != "unknown" or self.stop.is_set():
                break
            node, url = self.pick()  # the retry may go to another node: same request id
        outcome = combine_attempts(attempts)
        self.history.record(
            {
                "process": self.process,
                "kind": "set",
                "f": "add",
                "key": key,
                "value": self.n,
                "node": node,
                "invoke": invoke,
                "complete": self.history.now(),
                "outcome": outcome,
                "result": body.get("revision") if status == 200 else None,
            }
        )


class DataPlaneProbe(Workload):
    """Data-plane requests of the app under test (``model.probe``) against every node,
    with the revision each used."""

    def __init__(self, *args: Any, model: AppModel, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = model

    def step(self) -> None:
        node, url = self.pick()
        for _ in range(10):  # answers that depend on the node need a named node
            if not self.model.per_node_answers or node != "shared":
                break
            node, url = self.pick()
        else:
            return
        probe = self.model.probe(self.rng)
        invoke = self.history.now()
        status, body = http("GET", f"{url}{probe.path}", timeout=3)
        f, value, key = probe.f, probe.value, probe.key
        if status == 200:
            outcome, result = "ok", body
        elif status == 503 and isinstance(body, dict) and body.get("error", {}).get("code") == "fenced":
            outcome, result = "fail", {"fenced": body["error"].get("details")}
        else:
            outcome, result = "fail", {"status": status}
        self.history.record(
            {
                "process": self.process,
                "kind": "dataplane",
                "f": f,
                "key": key,
                "value": value,
                "node": node,
                "invoke": invoke,
                "complete": self.history.now(),
                "outcome": outcome,
                "result": result,
            }
        )
        time.sleep(0.01)


def base_config() -> list[tuple[str, str, dict[str, Any]]]:
    """The management config the churn workload mutates (two vservers, four volumes)."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for v in range(2):
        rows.append(("vservers", f"vs{v}", {"name": f"vs{v}", "protocols": ["nfs", "cifs"]}))
    for a in range(3):
        rows.append(("aggregates", f"ag{a}", {"name": f"ag{a}", "home_node": f"n{a % 3 + 1}", "size_mb": 100}))
    for i in range(4):
        rows.append(
            (
                "volumes",
                f"vol{i}",
                {
                    "name": f"vol{i}",
                    "vserver": f"vs{i % 2}",
                    "aggregate": f"ag{i % 3}",
                    "size_mb": 10,
                    "junction_path": f"/vol{i}",
                },
            )
        )
    for v in range(2):
        rows.append(
            (
                "export_rules",
                f"vs{v}:default:1",
                {"vserver": f"vs{v}", "policy": "default", "index": 1, "client_match": "10.0.0.0/8", "access": "rw"},
            )
        )
        rows.append(
            (
                "export_rules",
                f"vs{v}:default:2",
                {
                    "vserver": f"vs{v}",
                    "policy": "default",
                    "index": 2,
                    "client_match": "192.168.0.0/16",
                    "access": "ro",
                },
            )
        )
        for s in range(3):
            rows.append(
                (
                    "cifs_shares",
                    f"vs{v}:sh{s}",
                    {"vserver": f"vs{v}", "share": f"sh{s}", "path": f"/vol{(v + 2 * s) % 4}"},
                )
            )
    return rows


def ontap_churn(rng: random.Random, nodes: list[str]) -> tuple[str, str, dict[str, Any]]:
    """One change of an ONTAP management row that data-plane answers depend on."""
    roll = rng.random()
    if roll < 0.3:
        v, idx = rng.randrange(2), rng.choice([1, 2])
        table, key = "export_rules", f"vs{v}:default:{idx}"
        row: dict[str, Any] = {
            "vserver": f"vs{v}",
            "policy": "default",
            "index": idx,
            "client_match": rng.choice(["10.0.0.0/8", "192.168.0.0/16", "0.0.0.0/0"]),
            "access": rng.choice(["ro", "rw"]),
        }
    elif roll < 0.55:
        i = rng.randrange(4)
        table, key = "volumes", f"vol{i}"
        row = {
            "name": f"vol{i}",
            "vserver": f"vs{i % 2}",
            "aggregate": f"ag{rng.randrange(3)}",
            "size_mb": 10,
            "junction_path": f"/vol{i}",
            "state": rng.choice(["online", "online", "offline"]),
        }
    elif roll < 0.75:
        a = rng.randrange(3)
        table, key = "aggregates", f"ag{a}"
        row = {"name": f"ag{a}", "home_node": rng.choice(nodes), "size_mb": 100}
    elif roll < 0.9:
        v = rng.randrange(2)
        table, key = "vservers", f"vs{v}"
        row = {
            "name": f"vs{v}",
            "protocols": rng.choice([["nfs", "cifs"], ["nfs"], ["cifs"]]),
            "state": rng.choice(["running", "running", "stopped"]),
        }
    else:
        v, s = rng.randrange(2), rng.randrange(3)
        table, key = "cifs_shares", f"vs{v}:sh{s}"
        row = {
            "vserver": f"vs{v}",
            "share": f"sh{s}",
            "path": f"/vol{rng.randrange(4)}",
            "acl": [{"user": "Everyone", "permission": rng.choice(["read", "change", "full_control"])}],
        }
    return table, key, row


class ConfigChurn(Workload):
    """Changes management rows that data-plane answers depend on (``model.churn``)."""

    def __init__(self, *args: Any, nodes: list[str], model: AppModel, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes = nodes
        self.model = model

    def step(self) -> None:
        node, url = self.pick()
        table, key, row = self.model.churn(self.rng, self.nodes)
        invoke = self.history.now()
        status, body = http(
            "PUT",
            f"{url}/v1/tables/{table}/{quote(key, safe=':')}",
            row,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        self.history.record(
            {
                "process": self.process,
                "kind": "config",
                "f": "put_row",
                "key": f"{table}/{key}",
                "value": row,
                "node": node,
                "invoke": invoke,
                "complete": self.history.now(),
                "outcome": outcome_of(status, body, is_write=True),
                "result": body.get("revision") if status == 200 else None,
            }
        )
        time.sleep(0.05)
