from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.cluster import Cluster, running_cluster


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    with running_cluster(str(tmp_path), 3, cluster_address=True, env={"RDBSYNC_REQUEST_TIMEOUT": "3"}) as c:
        yield c
