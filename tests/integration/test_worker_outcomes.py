"""How the blade worker feeds resync outcomes to the fencing policy, on a one-node store
with the ONTAP app: a run's clean outcomes as one step, and never after a failure that
came later in the run."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fencing import Outcome, ResyncFailed, ResyncOk, ResyncRunOk
from node._blades import Fault
from node._runtime import BladeRuntime, _LoopState
from node.launcher import free_ports
from rdb import NoQuorum, ReplicatedStore

pytestmark = pytest.mark.integration


@pytest.fixture()
async def runtime(tmp_path: Any) -> AsyncIterator[BladeRuntime]:
    store = ReplicatedStore(f"127.0.0.1:{free_ports(1)[0]}", [], os.path.join(str(tmp_path), "s"), password="pw")
    store.start(asyncio.get_running_loop())
    try:
        for _ in range(200):
            try:
                if (await store.put("warm", 0, timeout=2))["status"] == "ok":
                    break
            except NoQuorum:
                await asyncio.sleep(0.05)
        rt = BladeRuntime("n1", store)
        state = _LoopState(next_audit=rt.clock() + 3600.0)
        await rt._iteration(state)  # the load run: every table in sync
        yield rt
    finally:
        store.close()


def _observed(rt: BladeRuntime) -> list[Outcome]:
    """The resync outcomes ``rt`` feeds its policy from now on (the catch-up's and
    others are not kept)."""
    seen: list[Outcome] = []
    real = rt.observe

    def spy(outcome: Outcome) -> None:
        if isinstance(outcome, ResyncOk | ResyncRunOk | ResyncFailed):
            seen.append(outcome)
        real(outcome)

    rt.observe = spy  # type: ignore[method-assign]
    return seen


async def test_a_runs_clean_outcomes_reach_the_policy_as_one(runtime: BladeRuntime) -> None:
    seen = _observed(runtime)
    revision = (await runtime.store.put("elsewhere/x", 1))["revision"]
    await runtime.engine.run_pending()
    (run_ok,) = seen  # one step for the whole run, not one per table
    assert isinstance(run_ok, ResyncRunOk)
    assert sorted(ok.table for ok in run_ok.oks) == sorted(runtime.tables)
    assert {ok.revision for ok in run_ok.oks} == {revision}
    assert all(h.synced_revision == revision for h in runtime.fence_state.tables.values())


async def test_clean_outcomes_before_a_failure_reach_the_policy_before_it(runtime: BladeRuntime) -> None:
    order = list(runtime.tables)
    broken = order[2]
    runtime.tables[broken].fault = Fault("error", None)
    seen = _observed(runtime)
    await runtime.engine.resync(None, "manual")  # every table's apply is called
    assert [type(o) for o in seen] == [ResyncRunOk, ResyncFailed, ResyncRunOk]
    first, failed, rest = seen
    assert isinstance(first, ResyncRunOk) and isinstance(failed, ResyncFailed) and isinstance(rest, ResyncRunOk)
    assert [ok.table for ok in first.oks] == order[:2]
    assert failed.table == broken
    assert [ok.table for ok in rest.oks] == order[3:]
    assert not runtime.fence_state.tables[broken].ok


async def test_one_clean_outcome_is_passed_as_it_is(runtime: BladeRuntime) -> None:
    seen = _observed(runtime)
    table = next(iter(runtime.tables))
    await runtime.engine.resync(table, "manual")
    assert [type(o) for o in seen] == [ResyncOk]
