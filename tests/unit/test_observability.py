"""The node's metrics registry and structured logging, without a cluster."""

from __future__ import annotations

import io
import json
import logging
from collections import deque
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

from fencing import (
    Fence,
    FenceLifted,
    FenceRaised,
    NodeCaughtUp,
    QuorumLost,
    QuorumRegained,
    TableFailed,
)
from node._logging import JsonFormatter, RuntimeLog, TextFormatter, event_fields, log_event
from node._metrics import NodeMetrics
from tests.metrics import value


def test_each_node_has_its_own_registry() -> None:
    # Two nodes in one process (the global registry would refuse the second set).
    a, b = NodeMetrics(), NodeMetrics()
    a.observe_timing("commit", 0.003)
    a.observe_timing("fsync", 0.0002)
    a.observe_timing("no_such_timing", 1.0)
    text_a, text_b = generate_latest(a.registry).decode(), generate_latest(b.registry).decode()
    assert value(text_a, "rdb_commit_duration_seconds_count") == 1
    assert value(text_a, "rdb_commit_duration_seconds_bucket", le="0.005") == 1
    assert value(text_a, "rdb_fsync_duration_seconds_count") == 1
    assert value(text_b, "rdb_commit_duration_seconds_count") == 0
    assert value(text_a, "process_cpu_seconds_total") is not None and value(text_a, "python_info", **_py()) == 1


def _py() -> dict[str, str]:
    import platform

    major, minor, patch = platform.python_version_tuple()
    return {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patch,
        "version": platform.python_version(),
    }


def test_commit_to_blade_latency_is_observed_once_per_revision() -> None:
    m = NodeMetrics()
    store = SimpleNamespace(commit_times=deque([(1, 100.0), (2, 100.5), (3, 101.0), (4, 103.0)]))
    runtime = SimpleNamespace(blade_times=deque([(2, 100.7), (3, 101.2)]))
    assert m.sample_blade_latency(store, runtime) == 3
    text = generate_latest(m.registry).decode()
    assert abs(value(text, "rdb_commit_to_blade_applied_seconds_sum") - (0.7 + 0.2 + 0.2)) < 1e-9
    assert m.sample_blade_latency(store, runtime) == 0  # nothing new: nothing counted twice
    runtime.blade_times.append((4, 103.5))
    assert m.sample_blade_latency(store, runtime) == 1
    text = generate_latest(m.registry).decode()
    assert value(text, "rdb_commit_to_blade_applied_seconds_count") == 4
    assert value(text, "rdb_commit_to_blade_applied_seconds_bucket", le="0.5") == 3  # 0.7 is not


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.obs.{id(out)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, out


FENCE = Fence("nfs", "vldb", "not_synced", "not resynced yet", 5.0, 3)
FENCED = FenceRaised("nfs", FENCE)


def test_json_lines_have_the_event_and_its_fields_as_keys() -> None:
    logger, out = _capture(JsonFormatter())
    log_event(logger, logging.WARNING, "fenced", **event_fields(FENCED))
    log_event(logger, logging.INFO, "odd", level="x", msg="y")  # reserved keys do not clobber the line's
    logger.info("from a library: %s", 42)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs[0]["event"] == "fenced" and docs[0]["level"] == "warning"
    assert {k: docs[0][k] for k in ("protocol", "table", "cause", "message", "since")} == {
        "protocol": "nfs",
        "table": "vldb",
        "cause": "not_synced",
        "message": "not resynced yet",
        "since": 5.0,
    }
    assert "msg" not in docs[0]
    assert docs[1]["level"] == "info" and docs[1]["field_level"] == "x" and docs[1]["field_msg"] == "y"
    assert docs[2]["event"] == "log" and docs[2]["msg"] == "from a library: 42"


def test_text_lines_read_as_event_and_key_values() -> None:
    logger, out = _capture(TextFormatter("n2"))
    log_event(logger, logging.WARNING, "fenced", **event_fields(FENCED))
    line = out.getvalue().strip()
    assert line.endswith(
        "n2 WARNING fenced protocol=nfs kind=protocol vservers=null table=vldb cause=not_synced"
        ' message="not resynced yet" since=5 revision=3'
    ), line
    assert "{" not in line


def test_unfenced_names_the_fence_it_lifted() -> None:
    event = {"type": "unfenced", "protocol": "nfs", "was": {"protocol": "nfs", "table": "vldb", "cause": "error"}}
    assert event_fields(event) == {"protocol": "nfs", "was_table": "vldb", "was_cause": "error"}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _runtime_log(report_after: float = 10.0) -> tuple[RuntimeLog, list[logging.LogRecord], _Clock]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(f"test.obs.runtime.{id(records)}")
    logger.handlers[:] = [Keep()]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    clock = _Clock()
    rl = RuntimeLog("n1", logger=logger, ready_fields={"http": "http://x"}, report_after=report_after, clock=clock)
    return rl, records, clock


def _shown(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [(r.levelname, r.msg) for r in records if r.levelno >= logging.INFO]


def test_start_up_is_one_ready_line_not_one_per_fence() -> None:
    rl, records, clock = _runtime_log()
    fence: Any = SimpleNamespace(table="vldb", cause="not_synced")
    rl.record([FENCED, QuorumLost()], caught_up=False, fences={"nfs": fence})
    clock.now = 1.5
    unfenced = FenceLifted("nfs", FENCE)
    rl.record([QuorumRegained(), NodeCaughtUp(3), unfenced], caught_up=True, fences={})
    assert _shown(records) == [("INFO", "node_ready")]
    ready = records[-1]
    assert ready.fields == {"http": "http://x", "startup_seconds": 1.5}
    # Once ready, a fence is news.
    rl.record([FENCED], caught_up=True, fences={"nfs": fence})
    rl.record([], caught_up=True, fences={})  # nothing new: nothing logged, and no second ready line
    assert _shown(records)[1:] == [("WARNING", "fenced")]


def test_a_resync_failure_during_start_up_is_logged_and_a_slow_start_up_is_reported() -> None:
    rl, records, clock = _runtime_log(report_after=10.0)
    fence: Any = SimpleNamespace(table="export_rules", cause="error")
    failed = TableFailed("export_rules", "error", "boom", 3, 1)
    rl.record([failed, FENCED], caught_up=True, fences={"nfs": fence})
    assert _shown(records) == [("WARNING", "resync_failed")]
    clock.now = 10.5
    rl.record([], caught_up=True, fences={"nfs": fence})
    assert _shown(records)[1:] == [("WARNING", "node_not_ready")]
    assert records[-1].fields["fenced"] == {"nfs": "export_rules error"}
    # From then on every change is logged, and the node's readiness still gets its line.
    rl.record([FenceLifted("nfs", FENCE)], caught_up=True, fences={})
    assert _shown(records)[2:] == [("INFO", "unfenced"), ("INFO", "node_ready")]


def test_the_dashboard_files_are_package_data_and_load_nothing_from_outside() -> None:
    import fnmatch
    import pathlib
    import re
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["node"]
    files = sorted(p.name for p in (root / "node" / "ui").iterdir() if p.is_file())
    assert {"index.html", "app.js", "style.css"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(f"ui/{name}", g) for g in globs), f"node/ui/{name} is not in the package data"
        text = (root / "node" / "ui" / name).read_text()
        # No CDN, no web font, no remote script: the page works with no internet.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?https?:""", text), name


def test_the_plain_count_histograms_expose_what_prometheus_client_would() -> None:
    """``_Histogram`` replaces prometheus_client's locking ``Histogram``: the same
    observations must give the same exposition (bucket edges included: ``le`` is <=)."""
    from random import Random

    from prometheus_client import CollectorRegistry, Histogram

    from node._metrics import _LATENCY_BUCKETS, _Histogram

    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = _Histogram("h_seconds", "doc", _LATENCY_BUCKETS, ("table", "kind"))
    ours_registry.register(ours)
    theirs = Histogram("h_seconds", "doc", ["table", "kind"], buckets=_LATENCY_BUCKETS, registry=theirs_registry)
    rng = Random(7)
    for _ in range(2000):
        labels = (rng.choice("ab"), rng.choice(("load", "incremental")))
        seconds = rng.choice((*_LATENCY_BUCKETS, rng.uniform(0, 12), 0.0))  # edges, inside, beyond the last
        ours.observe(labels, seconds)
        theirs.labels(*labels).observe(seconds)
    # The same lines; the series' order differs (ours are sorted, theirs by first use).
    ours_text, theirs_text = generate_latest(ours_registry).decode(), generate_latest(theirs_registry).decode()
    assert sorted(ours_text.splitlines()) == sorted(theirs_text.splitlines())
