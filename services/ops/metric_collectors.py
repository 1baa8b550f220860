"""The scrape-time collectors: figures that describe a state rather than an event (the ISS
sources, the age of the position and elements; with workers, each worker's process figures),
computed when Prometheus scrapes, so nothing runs on the chat path for them."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("iss_llm.metrics")

PREFIX = "iss_llm"
FETCHES_DOC = "Fetches from each ISS source by result."


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def fetch_counts(sources: dict[str, Any]) -> Iterator[tuple[tuple[str, str], float]]:
    """((source, "ok" | "error"), count so far) for each source in tracker.health()["sources"]."""
    for name, source in sources.items():
        if isinstance(source, dict):
            yield (name, "ok"), float(source.get("successes") or 0)
            yield (name, "error"), float(source.get("failures") or 0)


class IssCollector(Collector):
    """The ISS tracker's health, read when Prometheus scrapes (tracker.health(), nothing cached)."""

    STATES = ("ok", "failing", "idle")
    STATUSES = ("live", "propagating", "unavailable")

    def __init__(self, health: Callable[[], dict[str, Any]], fetches: bool = True) -> None:
        self._health = health
        # False with workers: the counts are shared counters (Metrics.iss_fetches).
        self._fetches = fetches

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
            fetches = CounterMetricFamily(f"{PREFIX}_iss_fetches", FETCHES_DOC, labels=["source", "result"])
            for (name, result), count in fetch_counts(sources):
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
