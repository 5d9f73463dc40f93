"""``ReplicatedStore.leadership()``, the blade worker's per-commit view, says what
``status()`` says of role, leader and quorum, on every node and after the leader is lost;
``read_position()``, a serializable read's, what it says of the indexes and quorum."""

from __future__ import annotations

from typing import Any

import pytest

from rdb import Leadership, ReadPosition, ReplicatedStore
from tests.integration.cluster import in_process_stores, settled_stores

pytestmark = pytest.mark.integration


def _from_status(store: ReplicatedStore) -> Leadership:
    st = store.status()
    return Leadership(st.role, st.leader, st.quorum)


async def test_leadership_is_status_role_leader_and_quorum(tmp_path: Any) -> None:
    stores = await in_process_stores(tmp_path)
    try:
        leader, followers = await settled_stores(stores)
        await leader.linearizable_barrier(timeout=10)
        views = {s._raft_address: s.leadership() for s in stores}
        assert {a: _from_status(s) for a, s in ((s._raft_address, s) for s in stores)} == views
        assert [v.role for v in views.values()].count("leader") == 1
        for s in stores:  # no write in flight: the indexes stand still between the calls
            st = s.status()
            assert s.read_position() == ReadPosition(st.applied_index, st.commit_index, st.quorum)
        assert all(v.quorum and v.leader == views[leader._raft_address].leader for v in views.values())
        for f in followers:
            f.close()
        # The leader keeps its role for a while, but no majority answers it any more.
        leader.raft._SyncObj__lastResponseTime.clear()  # as if the window had passed
        assert leader.leadership() == _from_status(leader)
        assert leader.leadership().quorum is False
    finally:
        for s in stores:
            s.close()
