from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.cluster import Cluster


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    c = Cluster(str(tmp_path), 3, cluster_address=True, env={"RDBSYNC_REQUEST_TIMEOUT": "3"})
    c.start()
    try:
        c.wait_ready()
        yield c
    finally:
        c.close()
