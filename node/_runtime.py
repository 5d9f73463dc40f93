"""The node's blade runtime: the blade tables, the resync engine and its worker loop.

The worker runs on the node's asyncio loop (owned by the app's cleanup context). Each
iteration brings every table up to the committed revision and returns a decision
string that is logged and counted:

- ``load``: a load event (start-up, snapshot install, rejoin after losing quorum,
  restore) marks every table for a full resync;
- ``incremental``: after commits, only the affected rows;
- ``audit``: every ``audit_interval`` seconds, a full comparison that counts drift.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from node._blades import BladeTable, build_blades
from rdb import ReplicatedStore
from resync import ResyncEngine, TableOutcome

log = logging.getLogger("node.resync")


class BladeRuntime:
    def __init__(
        self,
        node_id: str,
        store: ReplicatedStore,
        *,
        audit_interval: float = 60.0,
        action_timeout: float = 2.0,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.blades = build_blades(node_id)
        self.tables: dict[str, BladeTable] = {t.name: t for b in self.blades.values() for t in b.values()}
        self.audit_interval = audit_interval
        self.decisions: Counter[str] = Counter()
        self.recent: list[dict[str, Any]] = []
        self.engine = ResyncEngine(
            store,
            list(self.tables.values()),
            clock=time.time,
            action_timeout=action_timeout,
            on_outcome=self._record,
        )
        self._wake = asyncio.Event()
        self.worker_delay = 0.0  # fault injection: hold the worker back
        store.add_load_listener(self.load_event)

    def _record(self, outcome: TableOutcome) -> None:
        self.decisions[f"{outcome.kind}:{outcome.decision}"] += 1
        if not outcome.ok:
            log.warning("resync of %s failed (%s): %s", outcome.table, outcome.cause, outcome.error)
        elif outcome.actions and outcome.kind != "incremental":
            log.info(
                "resync %s of %s: %d action(s), drift %d",
                outcome.kind,
                outcome.table,
                len(outcome.actions),
                outcome.drift,
            )

    def load_event(self) -> None:
        """Snapshot install, restore or rejoin: resync everything in full. Loop thread."""
        self.engine.mark_load()
        self._wake.set()

    def applied_revision(self) -> int:
        """The revision every blade table on this node reflects (the minimum)."""
        return min(st.applied_revision for st in self.engine.status.values())

    def table_status(self) -> dict[str, Any]:
        revision = self.store.revision
        return {name: st.to_dict(revision) for name, st in self.engine.status.items()}

    async def run(self) -> None:
        """The worker loop; cancelled by the app's cleanup context."""
        next_audit = time.monotonic() + self.audit_interval
        had_quorum = True
        while True:
            changed = self.store.changed()
            if self.worker_delay:
                await asyncio.sleep(self.worker_delay)
            try:
                await self.engine.run_pending()
            except Exception:
                log.exception("resync worker iteration failed")
            if time.monotonic() >= next_audit:
                await self.engine.resync(None, "audit")
                next_audit = time.monotonic() + self.audit_interval
            quorum = self.store.status().quorum
            if quorum and not had_quorum:
                self.load_event()  # rejoined after a partition: trust nothing incremental
            had_quorum = quorum
            if any(st.needs_full for st in self.engine.status.values()) and not self._wake.is_set():
                # A failed table is retried after a short pause (fencing adds backoff).
                self._wake.clear()
                await _wait_any(changed, self._wake, timeout=0.2)
                continue
            self._wake.clear()
            await _wait_any(changed, self._wake, timeout=min(0.5, max(0.01, next_audit - time.monotonic())))


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
