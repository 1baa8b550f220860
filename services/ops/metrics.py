"""Prometheus metrics with the official client: the instruments, what the chat path records on
them, and the /metrics exposition. A `Recorder` (services/ops/recorder.py).

The chat path only ever increments a counter or observes a histogram it already holds (a few
microseconds, no I/O, no await): each request's figures are recorded once, at its outcome, from
the timings on its Exchange. What describes a state rather than an event is read at scrape time
by the collectors of services/ops/metric_collectors.py.

One process: the instruments live in a registry of their own (one per app, so tests do not
share counters). Several workers: services/ops/multiprocess.py sets PROMETHEUS_MULTIPROC_DIR in
the parent before this module (and so the client) is first imported, each worker writes its
values to mmap files there, and whichever worker answers a scrape merges them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from services.ops import multiprocess as lifecycle
from services.ops.exemplars import ExemplarGate, exemplar_labels
from services.ops.metric_collectors import FETCHES_DOC, PREFIX, IssCollector, WorkerProcessCollector, fetch_counts
from services.ops.recorder import Timed

log = logging.getLogger("iss_llm.metrics")

# prometheus_client, imported just above, runs in its multiprocess mode when this variable was set then.
_MULTIPROCESS_AT_IMPORT = os.environ.get(lifecycle.ENV) is not None

# No `_created` series: a gauge per labelled counter and histogram that dashboards never query
# (the multiprocess mode has none either, so both modes expose the same names).
disable_created_metrics()

OUTCOMES = ("done", "cancelled", "superseded", "error", "fallback", "shutdown", "lost")
LOST_STATUS = "none"  # a lost request's status label: its caller saw the connection close, no status

# Voice-sized buckets: a replica waits on the first token, so the interesting range is a few
# milliseconds to a few seconds, finest where a conversation starts to feel slow (100 ms - 1 s).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                10.0, 30.0)
# What this layer adds should be well under a millisecond; the tail shows a loaded event loop.
ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000, 2000, 4000, 8000)
# The ISS lookup is a cached propagation in steady state (tens of µs); cold it waits up to ISS_TIMEOUT.
LOOKUP_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 0.5, 1.0, 2.5,
                  5.0)

# A dated snapshot's suffix, as upstreams report the model they used: -2024-07-18, -20240718, -0613.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
FETCH_SYNC_S = 5.0  # with workers: how often each copies its ISS fetch counts into the shared counters
OTHER = "other"
_MODEL_CHARS = re.compile(r"[^A-Za-z0-9._:/@+\-]")
# This server's codes for an upstream failure (FIRST_TOKEN_TIMEOUT's and MAX_STREAM_SECONDS' included).
_UPSTREAM_CODE = re.compile(r"upstream_[a-z_]{1,40}|first_token_timeout|stream_too_long")
_REASON = re.compile(r"[a-z_]{1,32}")  # resync reasons are the server's own words ("overflow", "requested")


class ModelLabels:
    """The model label: the upstream model actually used, and only a name the operator configured
    (LLM_MODEL, DEFAULT_MODEL, MODEL_MAP's upstream names), so no caller can fill the label's values.

    An upstream naming a dated snapshot of a configured model ("gpt-4o-mini-2024-07-18" for
    "gpt-4o-mini") counts as that model; any other name is "other"."""

    def __init__(self, configured: Iterable[str | None] = ()) -> None:
        self._known: dict[str, str] = {}
        for name in configured:
            if name:
                self._known[name] = self._clean(name)

    @staticmethod
    def _clean(name: str) -> str:
        return _MODEL_CHARS.sub("_", name[:64]) or OTHER

    def __call__(self, name: str | None) -> str:
        if not name:
            return "none"
        label = self._known.get(name)
        if label is None:
            label = self._known.get(_SNAPSHOT.sub("", name[:128]), OTHER)
        return label


class Metrics:
    """Every instrument the server records, and the /metrics exposition."""

    def __init__(self, configured_models: Iterable[str | None] = ()) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        reg = self.registry
        self.models = ModelLabels(configured_models)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, buckets=buckets, registry=reg)

        self.requests = counter(
            "chat_requests", "Chat requests by route, how they ended and the HTTP status the caller got.",
            ("route", "outcome", "status"))
        self.in_flight = Gauge(f"{PREFIX}_chat_in_flight", "Chat requests being answered now.",
                               registry=reg, multiprocess_mode="livesum")
        self.upstream_ttft = histogram(
            "upstream_ttft_seconds",
            "The upstream LLM's own time to first token: request sent to first chunk received.",
            TTFT_BUCKETS, ("model",))
        self.added_before = histogram(
            "added_before_upstream_seconds",
            "Time this layer adds before the upstream is asked: request received to upstream request sent.",
            ADDED_BUCKETS, ("route",))
        self.added_after = histogram(
            "added_after_first_token_seconds",
            "Time this layer adds after the upstream's first chunk: received to written to the caller.",
            ADDED_BUCKETS, ("route",))
        self.ttft = histogram(
            "chat_ttft_seconds", "Time to first token as the caller meets it: request received to first chunk written.",
            TTFT_BUCKETS, ("route",))
        self.duration = histogram(
            "chat_duration_seconds", "Whole chat request, received to ended, by outcome.",
            DURATION_BUCKETS, ("route", "outcome"))
        self.tokens = histogram(
            "answer_tokens",
            "Tokens per whole answer (outcome done): the upstream's completion_tokens, else content chunks.",
            TOKEN_BUCKETS, ("route",))
        self.upstream_errors = counter(
            "upstream_errors", "Upstream failures by this server's error code (e.g. upstream_timeout).", ("code",))
        self.keepalives = counter("keepalives", "SSE keepalive comments sent while a stream had nothing to say.")
        self.fallbacks = counter("fallbacks", "Fallback replies sent instead of an upstream error.")
        self.iss_lookup = histogram(
            "iss_lookup_seconds", "Time the chat path spends getting the ISS state for one request.",
            LOOKUP_BUCKETS)
        self.console_sockets = Gauge(f"{PREFIX}_console_sockets", "Console WebSockets open.",
                                     registry=reg, multiprocess_mode="livesum")
        self.console_dropped = counter(
            "console_events_dropped", "Live events a console socket missed because it fell behind.")
        self.console_resyncs = counter(
            "console_resyncs", "Snapshots sent to a console socket instead of live events, by reason.", ("reason",))
        # With workers, fetch counts are real counters every worker adds to (summed across workers);
        # one process reads them from the tracker at scrape time instead.
        self.iss_fetches = counter("iss_fetches", FETCHES_DOC, ("source", "result")) if (
            self.multiprocess) else None
        self._fetches_seen: dict[tuple[str, str], float] = {}
        self._health: Callable[[], dict[str, Any]] | None = None
        self._sync: asyncio.Task[None] | None = None
        self._scrape_registry = self._exposed_registry()
        # Exemplars (OpenMetrics only): the client keeps none in its multiprocess mode, so none are made there.
        self._exemplars = None if self.multiprocess else ExemplarGate()

    def _exposed_registry(self) -> CollectorRegistry:
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            return self.registry
        # The instruments' values are in the mmap files of every worker: merge them on each scrape.
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        merged.register(WorkerProcessCollector())
        return merged

    def add_collector(self, collector: Collector) -> None:
        """A scrape-time collector (ISS, console): it reports this process's view."""
        self._scrape_registry.register(collector)

    def watch_iss(self, health: Callable[[], dict[str, Any]]) -> None:
        """The ISS figures: read at scrape time; with workers, fetch counts also copied every few seconds."""
        self.add_collector(IssCollector(health, fetches=self.iss_fetches is None))
        self._health = health

    async def start(self) -> None:
        """Background work, with workers only: the fetch counts copied into the shared counters."""
        if self.iss_fetches is not None and self._sync is None and self._health is not None:
            self._sync = asyncio.ensure_future(self._sync_fetches_every(FETCH_SYNC_S))

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)
            self._sync = None
            self.sync_iss_fetches()  # what was fetched since the last copy

    async def _sync_fetches_every(self, interval: float) -> None:
        while True:
            self.sync_iss_fetches()
            await asyncio.sleep(interval)

    def sync_iss_fetches(self) -> None:
        """Add what this worker's sources fetched since the last call to the counters every worker shares."""
        if self.iss_fetches is None or self._health is None:
            return
        try:
            sources = self._health().get("sources") or {}
        except Exception as exc:  # never let the ISS break the metrics
            log.warning("ISS health unavailable for metrics: %s", type(exc).__name__)
            return
        for (name, result), total in fetch_counts(sources):
            delta = total - self._fetches_seen.get((name, result), 0.0)
            if delta > 0:
                self._child(self.iss_fetches, name, result).inc(delta)
                self._fetches_seen[(name, result)] = total

    # ---- the chat path: each a handful of microseconds, never a wait ----

    def started(self) -> None:
        self.in_flight.inc()

    def ended(self) -> None:
        self.in_flight.dec()

    def iss_looked_up(self, seconds: float) -> None:
        self.iss_lookup.observe(seconds)

    def keepalive(self) -> None:
        self.keepalives.inc()

    def outcome(self, record: Timed) -> None:
        """One chat request ended: count it and observe its timings, once (from Exchange.end).

        The request counter and the duration and first-token histograms carry the request's ids as
        an exemplar (services/ops/exemplars.py): the first observation of each bucket every second."""
        child = self._child
        route = record.path
        outcome = str(record.outcome or "error")
        ended = record.ended if record.ended is not None else time.monotonic()
        exemplar = self._count(child(self.requests, route, outcome, str(record.status)), record, ended)
        exemplar = self._observe(child(self.duration, route, outcome), DURATION_BUCKETS, ended - record.started,
                                 record, ended, exemplar)
        if record.upstream_sent is not None:
            child(self.added_before, route).observe(record.upstream_sent - record.started)
        if record.stream:
            # The first-token split, for streamed answers (a whole answer has no first token).
            first = record.first_token_at
            if first is not None and record.upstream_sent is not None:
                exemplar = self._observe(child(self.upstream_ttft, self.models(record.upstream_model)), TTFT_BUCKETS,
                                         first - record.upstream_sent, record, ended, exemplar)
            if record.first_written is not None:
                self._observe(child(self.ttft, route), TTFT_BUCKETS, record.first_written - record.started,
                              record, ended, exemplar)
                if first is not None:
                    child(self.added_after, route).observe(record.first_written - first)
        if outcome == "done":
            child(self.tokens, route).observe(record.tokens)
        code = record.error_code
        if code is not None and _UPSTREAM_CODE.fullmatch(code):
            child(self.upstream_errors, code).inc()
        if outcome == "fallback":
            self.fallbacks.inc()

    def _count(self, counter: Any, record: Timed, now: float) -> dict[str, str] | None:
        """counter.inc(), with the record's exemplar when the series is due one; the exemplar if made."""
        gate = self._exemplars
        if gate is None or not gate.due(counter, now):
            counter.inc()
            return None
        exemplar = exemplar_labels(record.request_id, record.conversation_id, record.trace_id)
        counter.inc(1, exemplar)
        return exemplar

    def _observe(self, histogram: Any, buckets: tuple[float, ...], value: float, record: Timed, now: float,
                 exemplar: dict[str, str] | None) -> dict[str, str] | None:
        """histogram.observe(value), with the record's exemplar when the value's bucket is due one; the
        exemplar, made at the first observation that needs it (most need none: one per bucket a second)."""
        gate = self._exemplars
        if gate is None or not gate.due(histogram, now, value, buckets):
            histogram.observe(value)
            return exemplar
        if exemplar is None:
            exemplar = exemplar_labels(record.request_id, record.conversation_id, record.trace_id)
        histogram.observe(value, exemplar)
        return exemplar

    def _child(self, metric: Any, *values: str) -> Any:
        """metric.labels(*values), kept: the client's labels() costs as much as the observation itself.
        Every label here has a bounded set of values, so this cache is bounded too."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def refused(self, route: str, outcome: str, status: int) -> None:
        """A chat request answered before it began (bad key, bad body, too large, shutting down)."""
        self._child(self.requests, route, outcome, str(status)).inc()

    def lost(self, route: str, count: int = 1) -> None:
        """Chat requests a dead worker had open (counted by the worker that replaced it)."""
        self._child(self.requests, route, "lost", LOST_STATUS).inc(count)

    # ---- the console ----

    def console_opened(self) -> None:
        self.console_sockets.inc()

    def console_closed(self) -> None:
        self.console_sockets.dec()

    def console_resynced(self, reason: str, dropped: int) -> None:
        self.console_resyncs.labels(reason if _REASON.fullmatch(reason) else OTHER).inc()
        if dropped:
            self.console_dropped.inc(dropped)

    # ---- the scrape ----

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and Content-Type for a scrape (text format, or OpenMetrics when asked for)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._scrape_registry), content_type


# ---- multiprocess mode (several workers) ----


def multiprocess_dir() -> str | None:
    """The directory the client's multiprocess mode writes to, when that mode is on (the client chose
    it as it was imported, above: services/ops/multiprocess.prepare() sets the variable before)."""
    return os.environ.get(lifecycle.ENV) if _MULTIPROCESS_AT_IMPORT else None
