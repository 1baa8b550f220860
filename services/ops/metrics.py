"""Prometheus metrics with the official client: what the chat path counts, what is read at scrape time.

The chat path only ever increments a counter or observes a histogram it already holds (a few
microseconds, no I/O, no await): each request's figures are recorded once, at its outcome, from
the timings on its Exchange. Everything that describes a state rather than an event (the ISS
sources, the age of the position and elements, the console) is computed when Prometheus
scrapes, by custom collectors, so nothing runs on the chat path for it.

One process: the instruments live in a registry of their own (one per app, so tests do not
share counters). Several workers: `prepare_multiprocess()` in the parent before the fork
switches the client to its multiprocess mode, each worker writes its values to mmap files in
PROMETHEUS_MULTIPROC_DIR, and whichever worker answers a scrape merges them all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

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
    values,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("iss_llm.metrics")

# No `_created` series: a gauge per labelled counter and histogram that dashboards never query
# (the multiprocess mode has none either, so both modes expose the same names).
disable_created_metrics()

PREFIX = "iss_llm"
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

MAX_MODELS = 16
FETCH_SYNC_S = 5.0  # with workers: how often each copies its ISS fetch counts into the shared counters
OTHER = "other"
_MODEL_CHARS = re.compile(r"[^A-Za-z0-9._:/@+\-]")
# This server's codes for an upstream failure (FIRST_TOKEN_TIMEOUT's and MAX_STREAM_SECONDS' included).
_UPSTREAM_CODE = re.compile(r"upstream_[a-z_]{1,40}|first_token_timeout|stream_too_long")
_REASON = re.compile(r"[a-z_]{1,32}")  # resync reasons are the server's own words ("overflow", "requested")


class Timed(Protocol):
    """What one chat request's record offers the metrics once it ended (an Exchange); times are
    time.monotonic() readings: started (received), upstream asked, its first content token, written, ended."""

    path: str
    stream: bool
    outcome: Any
    status: int | None
    upstream_model: str | None
    error_code: str | None
    tokens: int
    started: float
    upstream_sent: float | None
    first_token_at: float | None
    first_written: float | None
    ended: float | None


class ModelLabels:
    """The model label: the upstream model actually used, never an unbounded set of caller strings.

    The configured models always get their own value; other names (a caller's `model` passed
    through) get one each up to MAX_MODELS, then all share "other"."""

    def __init__(self, configured: Iterable[str | None] = (), limit: int = MAX_MODELS) -> None:
        self._known: dict[str, str] = {}
        self._limit = limit
        for name in configured:
            if name:
                self._known[name] = self._clean(name)
        self._others = 0

    @staticmethod
    def _clean(name: str) -> str:
        return _MODEL_CHARS.sub("_", name[:64]) or OTHER

    def __call__(self, name: str | None) -> str:
        if not name:
            return "none"
        label = self._known.get(name)
        if label is not None:
            return label
        if self._others >= self._limit:
            return OTHER
        self._others += 1
        label = self._known[name] = self._clean(name)
        return label


class Metrics:
    """Every instrument the server records, and the /metrics exposition."""

    enabled = True

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
        self.iss_fetches = counter("iss_fetches", IssCollector.FETCHES_DOC, ("source", "result")) if (
            self.multiprocess) else None
        self._fetches_seen: dict[tuple[str, str], float] = {}
        self._health: Callable[[], dict[str, Any]] | None = None
        self._sync: asyncio.Task[None] | None = None
        self._scrape_registry = self._exposed_registry()

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
        for (name, result), total in _fetch_counts(sources):
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
        """One chat request ended: count it and observe its timings, once (from Exchange.end)."""
        child = self._child
        route = record.path
        outcome = str(record.outcome or "error")
        child(self.requests, route, outcome, str(record.status)).inc()
        ended = record.ended if record.ended is not None else time.monotonic()
        child(self.duration, route, outcome).observe(ended - record.started)
        if record.upstream_sent is not None:
            child(self.added_before, route).observe(record.upstream_sent - record.started)
        if record.stream:
            # The first-token split, for streamed answers (a whole answer has no first token).
            first = record.first_token_at
            if first is not None and record.upstream_sent is not None:
                child(self.upstream_ttft, self.models(record.upstream_model)).observe(first - record.upstream_sent)
            if record.first_written is not None:
                child(self.ttft, route).observe(record.first_written - record.started)
                if first is not None:
                    child(self.added_after, route).observe(record.first_written - first)
        if outcome == "done":
            child(self.tokens, route).observe(record.tokens)
        code = record.error_code
        if code is not None and _UPSTREAM_CODE.fullmatch(code):
            child(self.upstream_errors, code).inc()
        if outcome == "fallback":
            self.fallbacks.inc()

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


class NullMetrics(Metrics):
    """METRICS_ENABLED=false: the same calls, doing nothing."""

    enabled = False

    def __init__(self, configured_models: Iterable[str | None] = ()) -> None:
        self.multiprocess = False

    def add_collector(self, collector: Collector) -> None:
        return None

    def watch_iss(self, health: Callable[[], dict[str, Any]]) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def sync_iss_fetches(self) -> None:
        return None

    def started(self) -> None:
        return None

    def ended(self) -> None:
        return None

    def iss_looked_up(self, seconds: float) -> None:
        return None

    def keepalive(self) -> None:
        return None

    def outcome(self, record: Timed) -> None:
        return None

    def refused(self, route: str, outcome: str, status: int) -> None:
        return None

    def lost(self, route: str, count: int = 1) -> None:
        return None

    def console_opened(self) -> None:
        return None

    def console_closed(self) -> None:
        return None

    def console_resynced(self, reason: str, dropped: int) -> None:
        return None

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        return b"", "text/plain"


# ---- scrape-time collectors ----


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _fetch_counts(sources: dict[str, Any]) -> Iterator[tuple[tuple[str, str], float]]:
    """((source, "ok" | "error"), count so far) for each source in tracker.health()["sources"]."""
    for name, source in sources.items():
        if isinstance(source, dict):
            yield (name, "ok"), float(source.get("successes") or 0)
            yield (name, "error"), float(source.get("failures") or 0)


class IssCollector(Collector):
    """The ISS tracker's health, read when Prometheus scrapes (tracker.health(), nothing cached)."""

    STATES = ("ok", "failing", "idle")
    STATUSES = ("live", "propagating", "unavailable")
    FETCHES_DOC = "Fetches from each ISS source by result."

    def __init__(self, health: Callable[[], dict[str, Any]], fetches: bool = True) -> None:
        self._health = health
        self._fetches = fetches  # False with workers: the counts are shared counters (Metrics.iss_fetches)

    def describe(self) -> Iterable[Metric]:
        return []  # nothing fixed to check at registration; collect() runs only on a scrape

    def collect(self) -> Iterator[Metric]:
        try:
            health = self._health()
        except Exception as exc:  # a scrape must never fail for the ISS
            log.warning("ISS health unavailable for metrics: %s", type(exc).__name__)
            return
        status = _gauge("iss_status", "The ISS state the chat path gets: live fix, propagated elements, or none.",
                        ("status",))
        for name in self.STATUSES:
            status.add_metric([name], 1.0 if health.get("status") == name else 0.0)
        yield status
        fix = health.get("fix") or {}
        position = _gauge("iss_position_age_seconds", "Age of the last live position fix (absent: none yet).",
                          ("source",))
        if isinstance(fix.get("age_seconds"), int | float):
            position.add_metric([str(fix.get("source"))], float(fix["age_seconds"]))
        yield position
        elements = health.get("elements") or {}
        elements_age = _gauge("iss_elements_age_seconds", "Age of the orbital elements in use, from their epoch.",
                              ("origin",))
        if isinstance(elements.get("age_days"), int | float):
            elements_age.add_metric([str(elements.get("origin"))], float(elements["age_days"]) * 86400.0)
        yield elements_age
        accuracy = _gauge("iss_accuracy_km", "Estimated error of the position the chat path gets, in km.")
        if isinstance(health.get("accuracy_km"), int | float):
            accuracy.add_metric([], float(health["accuracy_km"]))
        yield accuracy
        sources = health.get("sources") or {}
        state = _gauge("iss_source_state", "Each ISS source's state (1 for the current one).", ("source", "state"))
        failures = _gauge("iss_source_consecutive_failures", "Failures in a row of each ISS source.", ("source",))
        for name, source in sources.items():
            if not isinstance(source, dict):
                continue
            for candidate in self.STATES:
                state.add_metric([name, candidate], 1.0 if source.get("state") == candidate else 0.0)
            failures.add_metric([name], float(source.get("consecutive_failures") or 0))
        yield state
        yield failures
        if self._fetches:
            fetches = CounterMetricFamily(f"{PREFIX}_iss_fetches", self.FETCHES_DOC, labels=["source", "result"])
            for (name, result), count in _fetch_counts(sources):
                fetches.add_metric([name, result], count)
            yield fetches


class WorkerProcessCollector(Collector):
    """With several workers: the process metrics (CPU, memory, open files) of each, labelled by pid.

    The client's ProcessCollector reads /proc for one process; a scrape answered by one worker
    would otherwise show that worker alone. The parent's children are the workers."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        parent = os.getppid()
        pids = [parent, *_children(parent)]
        families: dict[str, Metric] = {}
        for pid in pids:
            for family in ProcessCollector(pid=functools.partial(int, pid), registry=None).collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


# ---- multiprocess mode (several workers) ----


def multiprocess_dir() -> str | None:
    """The directory the client's multiprocess mode writes to, when that mode is on."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and getattr(values.ValueClass, "_multiprocess", False):
        return path
    return None


def prepare_multiprocess(path: str | os.PathLike[str] | None = None) -> Path:
    """In the parent, before the workers fork: an empty directory, and the client in multiprocess mode.

    `path` defaults to $PROMETHEUS_MULTIPROC_DIR, else a new temporary directory. Files left by an
    earlier run are removed (their counters would be added to this run's)."""
    chosen = Path(path or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="iss-llm-metrics-"))
    chosen.mkdir(parents=True, exist_ok=True)
    for entry in chosen.glob("*.db"):
        entry.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(chosen)
    # The client picks its value class when it is first imported: switch it now, before any
    # instrument exists (they are created per worker, after the fork).
    values.ValueClass = values.MultiProcessValue()
    return chosen


def worker_exited(pid: int) -> None:
    """In the parent, when a worker exits: its live gauges (in flight, console sockets) stop counting."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.mark_process_dead(pid, path)


def cleanup_multiprocess(path: str | os.PathLike[str]) -> None:
    """In the parent, at exit: remove a directory prepare_multiprocess() created."""
    shutil.rmtree(path, ignore_errors=True)
