"""A node's aiohttp application built in this process, without a cluster: for tests of
what the app is made of (routes, the OpenAPI document, the request dispatch) that never
reach the store."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node._config import NodeConfig
from node._http import build_app
from node._runtime import BladeRuntime


class UnservedStore:
    """Just enough of a ReplicatedStore for building the app (nothing is served)."""

    references = ()
    revision = 0

    def add_load_listener(self, listener: Any) -> None:
        pass

    def add_change_listener(self, listener: Any) -> None:
        pass


def app_for(**config: Any) -> web.Application:
    cfg = NodeConfig(
        id="n1", raft_address="127.0.0.1:1", http_address="127.0.0.1:2", data_dir="/nonexistent", secret="s", **config
    )
    store: Any = UnservedStore()
    return build_app(cfg, store, BladeRuntime("n1", store))
