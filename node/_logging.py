"""Structured logs for a node or the local launcher.

Every line is an *event*: a name and its fields. As JSON (``--log-format json``, or
``auto`` when stderr is not a terminal) a line is one object whose keys are the fields::

    {"ts": 1764627573.123, "level": "warning", "logger": "node.fencing", "node": "n2",
     "event": "fenced", "protocol": "nfs", "table": "export_rules", "cause": "error", ...}

On a terminal the same line reads ``22:19:33.123 n2 WARNING fenced protocol=nfs
table=export_rules cause=error ...``. Our code logs with ``log_event`` (or, in packages
that must not import node, with ``extra={"event": NAME, "fields": {...}}``); a record
from a library has the event ``log`` and its text under ``msg``.

``RuntimeLog`` turns the fencing policy's events into lines, without the start-up
transient: until a node is first ready, its fences are the initial state being
established, not changes; one ``node_ready`` line per node ends the start-up.

Threading: ``setup_logging`` runs once on the main thread before anything logs; the
formatters are thread-safe (the Raft tick thread logs too); ``RuntimeLog`` runs on the
node's asyncio loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from fencing import FenceEvent
from node._agents import AGENT_PREFIX

#: Keys of every JSON line; a field with one of these names is written as ``field_<name>``.
_RESERVED = frozenset({"ts", "level", "logger", "node", "event", "msg", "exc"})
#: A start-up that is not ready after this long is reported, and its fences logged from then on.
STARTUP_REPORT_SECONDS = 10.0
#: Events logged at warning; the others at info.
_WARNINGS = frozenset({"fenced", "fence_changed", "resync_failed", "quorum_lost", "stalled", "app_mismatch"})


def log_event(logger: logging.Logger, level: int, event: str, /, *, exc_info: Any = None, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (JSON-serialisable values) as one structured line
    (with the traceback of ``exc_info``, as in ``logging``)."""
    logger.log(level, event, exc_info=exc_info, extra={"event": event, "fields": fields})


def _event_of(record: logging.LogRecord) -> tuple[str, dict[str, Any], str | None]:
    """(event name, fields, free text or None) of a record."""
    event = getattr(record, "event", None)
    fields = getattr(record, "fields", None)
    if isinstance(event, str):
        text = record.getMessage()
        return event, dict(fields) if isinstance(fields, Mapping) else {}, None if text == event else text
    return "log", {}, record.getMessage()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the event, its fields as keys, and who logged it."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields, text = _event_of(record)
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        node_id = getattr(record, "node", None) or os.environ.get("RDBSYNC_LOG_NODE")
        if node_id:
            doc["node"] = node_id
        doc["event"] = event
        for key, value in fields.items():
            doc[f"field_{key}" if key in _RESERVED else key] = _jsonable(value)
        if text is not None:
            doc["msg"] = text
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(", ", ": "))


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() or c in '"=' for c in value) else json.dumps(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    return json.dumps(value, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``22:19:33.123 n1 WARNING fenced protocol=nfs table=vldb cause=not_synced``."""

    def __init__(self, node_id: str = "") -> None:
        super().__init__()
        self._prefix = f" {node_id}" if node_id else ""

    def format(self, record: logging.LogRecord) -> str:
        event, fields, text = _event_of(record)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [f"{stamp}{self._prefix} {record.levelname:<7}"]
        if event == "log":
            parts.append(f"{record.name}: {text}")
        else:
            parts.append(event)
            parts += [f"{key}={_text_value(value)}" for key, value in fields.items()]
            if text is not None:
                parts.append(f"- {text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _not_a_client_protocol_error(record: logging.LogRecord) -> bool:
    """Drop aiohttp's tracebacks for requests its parser rejects (garbage, an 8 KiB
    request line): the client got its 400; the server did nothing wrong."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError | RequestPayloadError)


def setup_logging(fmt: str, node_id: str = "") -> None:
    """Send every log record to stderr: JSON lines for ``json`` (and ``auto`` off a
    terminal), readable text for ``text`` (and ``auto`` on one)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    if node_id:
        os.environ["RDBSYNC_LOG_NODE"] = node_id
    # PySyncObj logs every reconnect attempt at warning; keep its errors only.
    logging.getLogger("pysyncobj").setLevel(logging.ERROR)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_not_a_client_protocol_error)


# ---------------------------------------------------------------- fencing events


def event_fields(event: FenceEvent | Mapping[str, Any], clock_offset: float = 0.0) -> dict[str, Any]:
    """The fields of one fencing-policy event (a typed ``FenceEvent``, or its wire form
    ``{"type": ..., ...}``) as flat log keys: a nested fence becomes the line's own keys
    (``table``, ``cause``, ``message``, ``since``, ...); the fence an ``unfenced`` event
    lifted is ``was_table``, ``was_cause``, .... ``clock_offset`` turns the policy clock's
    times into wall time (as in ``to_dict``). An agent's table (``agent:NAME``) also gives
    the line an ``agent`` key, so an agent's failures and fences are found by its name."""
    doc = event.to_dict(clock_offset) if isinstance(event, FenceEvent) else event
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "type":
            continue
        if key == "fence" and isinstance(value, Mapping):
            out.update({k: v for k, v in value.items() if k not in doc})
        elif key == "was" and isinstance(value, Mapping):
            out.update({f"was_{k}": v for k, v in value.items() if k != "protocol"})
        else:
            out[key] = value
    for key in ("table", "was_table"):
        table = out.get(key)
        if isinstance(table, str) and table.startswith(AGENT_PREFIX):
            out.setdefault("agent", table[len(AGENT_PREFIX) :])
            break
    return out


class RuntimeLog:
    """Logs the fencing policy's events for one node, and its start-up as one line.

    Until the node is first ready (caught up with the leader, nothing fenced), fence and
    quorum events are the initial state settling, logged at debug only; the moment it is
    ready, one ``node_ready`` line says so. A start-up still not ready after
    ``report_after`` seconds logs ``node_not_ready`` once, with what fences it, and from
    then on every event. Resync failures are always logged. Loop thread.
    """

    def __init__(
        self,
        node_id: str,
        *,
        logger: logging.Logger | None = None,
        ready_fields: Mapping[str, Any] | None = None,
        report_after: float = STARTUP_REPORT_SECONDS,
        clock: Any = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.logger = logger or logging.getLogger("node.fencing")
        self.ready_fields = dict(ready_fields or {})
        self.report_after = report_after
        self._clock = clock
        self._started = clock()
        self.ready = False
        self._reported_slow = False

    def record(
        self,
        events: Iterable[FenceEvent],
        *,
        caught_up: bool,
        fences: Mapping[str, Any],
        clock_offset: float = 0.0,
    ) -> None:
        """Log ``events`` (just decided) given the state they led to; ``clock_offset``
        turns the policy clock's times into wall time."""
        starting = not self.ready and not self._reported_slow
        for event in events:
            name = event.type or "event"
            level = logging.WARNING if name in _WARNINGS else logging.INFO
            if starting and name != "resync_failed":
                level = logging.DEBUG
            log_event(self.logger, level, name, **event_fields(event, clock_offset))
        if self.ready:
            return
        elapsed = self._clock() - self._started
        if caught_up and not fences:
            self.ready = True
            log_event(self.logger, logging.INFO, "node_ready", **self.ready_fields, startup_seconds=round(elapsed, 3))
        elif not self._reported_slow and elapsed >= self.report_after:
            self._reported_slow = True
            waiting = {p: f"{getattr(f, 'table', '?')} {getattr(f, 'cause', '?')}" for p, f in fences.items()}
            log_event(
                self.logger,
                logging.WARNING,
                "node_not_ready",
                **self.ready_fields,
                startup_seconds=round(elapsed, 3),
                caught_up=caught_up,
                fenced=waiting,
            )


__all__ = ["JsonFormatter", "RuntimeLog", "TextFormatter", "event_fields", "log_event", "setup_logging"]
