"""The node's Prometheus metrics, with prometheus_client, in a registry of its own.

Each node's application has its own ``CollectorRegistry`` (never the process-global
one), so several nodes can share a process in tests. It holds:

- the process and Python collectors of prometheus_client (``process_*``, ``python_*``);
- histograms fed as things happen (``_Histogram``: plain counts, no locks): HTTP
  request latency by method, route template and status; commit, fsync and
  read-barrier latency (reported by ``ReplicatedStore.timing``); resync run duration
  by table and kind (``BladeRuntime.outcome_listeners``); and commit to blade applied
  (from the store's and the runtime's revision timestamps);
- the node's state (revision, Raft, blade tables, fences) read at scrape time by
  ``_StateCollector``.

rdb and resync never import prometheus_client: they report timings as numbers through
a callback, and node/ turns them into metrics here.

Threading: the HTTP middleware, the scrape and the commit-to-blade sampler run on the
node's asyncio loop; ``observe_timing`` also runs on the Raft tick thread (fsync, the
only series fed from there: one writer per series, see ``_Histogram``).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Reversible
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from node._common import REQUEST_OBSERVER, RUNTIME, STORE

if TYPE_CHECKING:
    from node._runtime import BladeRuntime
    from rdb import ReplicatedStore
    from resync import TableOutcome

# The _created series double every counter and histogram for no use here (a
# process-wide switch of prometheus_client's; nothing else in the process uses it).
disable_created_metrics()  # type: ignore[no-untyped-call]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Request and commit latencies: 0.5 ms to 10 s.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_RESYNC_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The classic text format, which every Prometheus reads (prometheus_client's "latest"
#: announces 1.0.0, for UTF-8 names we do not use, which Prometheus 2 does not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How often commit-to-blade latencies are gathered (they carry their own timestamps).
BLADE_SAMPLE_SECONDS = 0.25
#: Seconds of history the dashboard's charts get.
WINDOW_SECONDS = 600

METRICS_REGISTRY: web.AppKey[NodeMetrics] = web.AppKey("metrics_registry")


class NodeMetrics:
    """The metrics of one node: a registry and the histograms fed as things happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        self.requests = _Histogram(
            "rdb_http_request_duration_seconds",
            "HTTP requests served, by method, route template and status code (a watch: the stream's life).",
            _LATENCY_BUCKETS,
            ("method", "route", "code"),
        )
        self.commit = _Histogram(
            "rdb_commit_duration_seconds",
            "Writes proposed by this node, from proposal to committed result (retries included).",
            _LATENCY_BUCKETS,
        )
        self.fsync = _Histogram(
            "rdb_fsync_duration_seconds", "Group-commit fdatasync calls on this node's Raft journal.", _FSYNC_BUCKETS
        )
        self.read_barrier = _Histogram(
            "rdb_read_barrier_duration_seconds",
            "Linearizable reads' wait for their read point (ReadIndex: a leadership round, then the apply).",
            _LATENCY_BUCKETS,
        )
        self.resync = _Histogram(
            "rdb_resync_run_duration_seconds",
            "Resync runs of one blade table, by table and kind (load, incremental, audit, manual).",
            _RESYNC_BUCKETS,
            ("table", "kind"),
        )
        self.commit_to_blade = _Histogram(
            "rdb_commit_to_blade_applied_seconds",
            "From a revision applied to this node's store to every blade table on this node reflecting it.",
            _LATENCY_BUCKETS,
        )
        for histogram in (self.requests, self.commit, self.fsync, self.read_barrier, self.resync, self.commit_to_blade):
            r.register(histogram)
        r.register(_ResponseCounts(self.requests))
        self._timings = {"commit": self.commit, "fsync": self.fsync, "read_barrier": self.read_barrier}
        self._blade_seen = 0  # the highest revision whose commit-to-blade latency was observed
        #: Per wall-clock second, for the dashboard's charts: [second, count, sum, max] of
        #: commit-to-blade latencies, and (second, revision) of the store.
        self.latency_window: deque[list[float]] = deque(maxlen=WINDOW_SECONDS)
        self.revision_window: deque[tuple[int, int]] = deque(maxlen=WINDOW_SECONDS)

    def observe_timing(self, name: str, seconds: float) -> None:
        """``ReplicatedStore.timing``: any thread; an unknown name is ignored."""
        histogram = self._timings.get(name)
        if histogram is not None:
            histogram.observe((), seconds)

    def observe_outcome(self, outcome: TableOutcome) -> None:
        """``BladeRuntime.outcome_listeners``: loop thread. Dry runs changed nothing: not counted."""
        if not outcome.dry_run:
            self.resync.observe((outcome.table, outcome.kind), outcome.duration_s)

    def sample_blade_latency(self, store: ReplicatedStore, runtime: BladeRuntime) -> int:
        """Observe commit-to-blade latency for every revision the blade tables reached
        since the last call: both sides carry wall-clock stamps, so the figures are exact
        whenever this runs. Returns how many it observed. Loop thread."""
        seen = self._blade_seen
        blades = _newer_than(runtime.blade_times, seen)
        if not blades:
            return 0
        # A copy first (one C-level call): the Raft tick thread appends while we read.
        commits = [(r, t) for r, t in _newer_than(list(store.commit_times), seen) if r <= blades[-1][0]]
        observed, i = 0, 0
        for revision, committed_at in commits:
            while blades[i][0] < revision:
                i += 1
            latency = max(0.0, blades[i][1] - committed_at)
            self.commit_to_blade.observe((), latency)
            self._window_add(int(blades[i][1]), latency)
            observed += 1
        self._blade_seen = blades[-1][0]
        return observed

    def _window_add(self, second: int, latency: float) -> None:
        window = self.latency_window
        if window and window[-1][0] == second:
            slot = window[-1]
            slot[1] += 1
            slot[2] += latency
            slot[3] = max(slot[3], latency)
        elif not window or window[-1][0] < second:
            window.append([second, 1, latency, latency])
        # an older second (clock stepped back): dropped from the chart, still in the histogram

    def sample_revision(self, revision: int, now: float) -> None:
        """Remember the store's revision once per second (the write-rate chart)."""
        second = int(now)
        if not self.revision_window or self.revision_window[-1][0] < second:
            self.revision_window.append((second, revision))

    def series(self) -> dict[str, Any]:
        """The charts' data: per second, the revision and the commit-to-blade latency."""
        return {
            "revision": [list(p) for p in self.revision_window],
            "blade_latency": [
                {"t": int(t), "count": int(n), "avg": total / n, "max": peak}
                for t, n, total, peak in self.latency_window
            ],
        }


def _newer_than(stamps: Reversible[tuple[int, float]], revision: int) -> list[tuple[int, float]]:
    """The (revision, time) stamps after ``revision``, oldest first, read from the newest
    end: the cost is the number of new stamps, not the length of the history."""
    out = []
    for stamp in reversed(stamps):
        if stamp[0] <= revision:
            break
        out.append(stamp)
    out.reverse()
    return out


class _Histogram(Collector):
    """A histogram counted in plain lists and turned into its metric family at scrape time.

    prometheus_client's ``Histogram`` takes a lock for the sum, the bucket and the count
    of every observation (and ``labels()`` another), which cost the write path about 4%
    of its time. Each series here is fed from one thread (the loop, or the tick thread
    for fsync) and read by the scrape on the loop: a scrape may miss an observation made
    meanwhile, never a bucket's count."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self._bounds = buckets
        #: label values -> [count per bucket..., count above the last, sum]; a histogram
        #: without labels shows its zeros from the start, as prometheus_client's does.
        self.series: dict[tuple[str, ...], list[float]] = {} if labels else {(): [0] * (len(buckets) + 2)}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, seconds)] += 1
        series[-1] += seconds

    def counts(self) -> Iterator[tuple[tuple[str, ...], list[tuple[str, float]], float]]:
        """(label values, cumulative (le, count) pairs ending with "+Inf", sum) per series."""
        # The bounds spelled as prometheus_client spells them ("0.005", "1.0").
        bounds = (*map(floatToGoString, self._bounds), "+Inf")
        # list() first: a series the tick thread adds meanwhile must not break the iteration.
        for labels, series in sorted(list(self.series.items())):
            cumulative, buckets = 0.0, []
            for bound, count in zip(bounds, series[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            yield labels, buckets, series[-1]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for labels, buckets, total in self.counts():
            family.add_metric(list(labels), buckets, total)
        yield family


class _ResponseCounts(Collector):
    """``http_responses_total`` by status code, summed from the request histogram."""

    def __init__(self, requests: _Histogram) -> None:
        self._requests = requests

    def collect(self) -> Iterator[Metric]:
        code_at = self._requests.labels.index("code")
        responses: dict[str, float] = {}
        for labels, buckets, _ in self._requests.counts():
            responses[labels[code_at]] = responses.get(labels[code_at], 0) + buckets[-1][1]
        family = CounterMetricFamily(
            "http_responses", "HTTP responses by status code (499: the client went away).", labels=["code"]
        )
        for code, count in sorted(responses.items()):
            family.add_metric([code], count)
        yield family


class _StateCollector(Collector):
    """The node's state at scrape time: revision, Raft, blade tables, fences, decisions, agents."""

    def __init__(self, store: ReplicatedStore, runtime: BladeRuntime) -> None:
        self._store = store
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        store, runtime = self._store, self._runtime
        st = store.status()
        revision = store.revision

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("rdb_revision", "The key space's revision on this node.", revision)
        yield gauge("rdb_raft_term", "This node's current Raft term.", st.term)
        yield gauge("rdb_raft_commit_index", "The Raft commit index known to this node.", st.commit_index)
        yield gauge("rdb_raft_applied_index", "The last Raft log index applied on this node.", st.applied_index)
        yield gauge("rdb_raft_is_leader", "1 if this node is the Raft leader.", int(st.role == "leader"))
        yield gauge("rdb_quorum", "1 if this node has recently heard from a majority.", int(st.quorum))
        yield CounterMetricFamily("rdb_journal_syncs", "Journal fdatasync calls.", value=st.journal_syncs)
        yield CounterMetricFamily(
            "rdb_truncations_below_commit",
            "Log truncations below the commit index (a Raft safety bug if ever non-zero).",
            value=st.truncations_below_commit,
        )
        yield CounterMetricFamily(
            "rdb_read_barriers",
            "Linearizable read rounds asked (ReadIndex; each serves a batch of reads).",
            value=store.barriers_proposed,
        )
        tables = runtime.engine.status
        applied = GaugeMetricFamily(
            "rdb_blade_applied_revision", "The revision a blade table reflects.", labels=["table"]
        )
        lag = GaugeMetricFamily(
            "rdb_blade_lag_revisions", "Revisions a blade table is behind the store.", labels=["table"]
        )
        drift = CounterMetricFamily(
            "rdb_blade_drift", "Blade rows found different from their projection by audits.", labels=["table"]
        )
        in_sync = GaugeMetricFamily("rdb_blade_in_sync", "1 if the blade table is in sync.", labels=["table"])
        for name, ts in tables.items():
            applied.add_metric([name], ts.applied_revision)
            lag.add_metric([name], max(0, revision - ts.applied_revision))
            drift.add_metric([name], ts.drift_count)
            in_sync.add_metric([name], int(ts.state == "in_sync"))
        yield from (applied, lag, drift, in_sync)
        runs = CounterMetricFamily(
            "rdb_resync_runs", "Resync runs by kind and decision, as 'kind:decision'.", labels=["run"]
        )
        for key, count in sorted(runtime.decisions.items()):
            runs.add_metric([key], count)
        yield runs
        fenced = {f["protocol"] for f in runtime.fences()}
        fence = GaugeMetricFamily(
            "rdb_protocol_fenced", "1 if the consumer (protocol or application) is fenced.", labels=["protocol", "kind"]
        )
        for protocol in runtime.policy.consumers():
            fence.add_metric([protocol, runtime.policy.kind(protocol)], int(protocol in fenced))
        yield fence
        events = CounterMetricFamily("rdb_fence_events", "Fencing policy events by type.", labels=["type"])
        for kind, count in sorted(runtime.event_counts.items()):
            events.add_metric([kind], count)
        yield events
        agent_applied = GaugeMetricFamily(
            "rdb_agent_applied_revision", "The revision an agent last reported it applied.", labels=["agent"]
        )
        agent_lag = GaugeMetricFamily(
            "rdb_agent_lag_revisions", "Revisions an agent is behind this node's blade tables.", labels=["agent"]
        )
        agent_ok = GaugeMetricFamily(
            "rdb_agent_ok", "1 if the agent reports its tables applied without error and in time.", labels=["agent"]
        )
        for name, agent in runtime.agents.status().items():
            agent_applied.add_metric([name], agent["applied_revision"])
            agent_lag.add_metric([name], agent["lag_revisions"] or 0)
            agent_ok.add_metric([name], int(agent["state"] == "ok"))
        yield from (agent_applied, agent_lag, agent_ok)


_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})


def _route(request: web.Request) -> str:
    """The route template (``/v1/kv/{key}``), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _request_observer(metrics: NodeMetrics) -> Callable[[web.Request, int, float], None]:
    """What the node's front middleware calls after each request, with the status the
    client gets (after the error translation; 499 when it went away)."""
    observe_request = metrics.requests.observe

    def observe(request: web.Request, code: int, seconds: float) -> None:
        method = request.method if request.method in _METHODS else "other"  # label values stay bounded
        observe_request((method, _route(request), str(code)), seconds)

    return observe


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_REGISTRY]
    metrics.sample_blade_latency(request.app[STORE], request.app[RUNTIME])
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE})


def install_metrics(app: web.Application) -> NodeMetrics:
    """Give ``app`` (built, not yet started, with STORE and RUNTIME set) its registry,
    the request middleware, ``GET /metrics`` and the samplers."""
    metrics = NodeMetrics()
    store, runtime = app[STORE], app[RUNTIME]
    app[METRICS_REGISTRY] = metrics
    metrics.registry.register(_StateCollector(store, runtime))
    store.timing = metrics.observe_timing
    runtime.outcome_listeners.append(metrics.observe_outcome)
    app[REQUEST_OBSERVER] = _request_observer(metrics)
    app.router.add_get("/metrics", metrics_handler)

    async def sampler(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(BLADE_SAMPLE_SECONDS)
                metrics.sample_blade_latency(store, runtime)
                metrics.sample_revision(store.revision, time.time())

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(sampler)
    return metrics


__all__ = ["METRICS_REGISTRY", "NodeMetrics", "install_metrics"]
