"""Logging set-up for a node or the local launcher.

Threading: ``setup_logging`` is called once, from the main thread, before anything logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        node_id = getattr(record, "node", None) or os.environ.get("RDBSYNC_LOG_NODE")
        if node_id:
            doc["node"] = node_id
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _not_a_client_protocol_error(record: logging.LogRecord) -> bool:
    """Drop aiohttp's tracebacks for requests its parser rejects (garbage, an 8 KiB
    request line): the client got its 400; the server did nothing wrong."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError | RequestPayloadError)


def setup_logging(fmt: str, node_id: str = "") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(_JsonFormatter())
    else:
        prefix = f"{node_id} " if node_id else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    if node_id:
        os.environ["RDBSYNC_LOG_NODE"] = node_id
    # PySyncObj logs every reconnect attempt at warning; keep its errors only.
    logging.getLogger("pysyncobj").setLevel(logging.ERROR)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_not_a_client_protocol_error)


__all__ = ["setup_logging"]
