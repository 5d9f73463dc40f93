"""What an operator sees of a node besides the API: metrics, the dashboard, the start-up line.

``install_observability`` is called once by ``build_app``, after the routes and the
runtime exist; it keeps this wiring out of the API module.
"""

from __future__ import annotations

from aiohttp import web

from node._common import CONFIG, RUNTIME
from node._metrics import install_metrics
from node._ui import add_ui_routes


def install_observability(app: web.Application) -> None:
    """Mount /metrics (and its middleware) and the /ui dashboard, and tell the runtime's log what the
    ``node_ready`` line should say. Before the app starts; loop thread or none."""
    cfg = app[CONFIG]
    install_metrics(app)
    add_ui_routes(app)
    app[RUNTIME].log.ready_fields = {
        "http": cfg.http_url,
        "raft": cfg.raft_address,
        "cluster_address": cfg.cluster_address or None,
        "data_dir": cfg.data_dir,
    }


__all__ = ["install_observability"]
