"""The benchmark's figures: cells per (concurrency, path), memory per layer, and the targets.

TTFT is the time to the first *content* token (what a voice replica waits for), not to the first
event: a role chunk that arrives at once says nothing about when the replica can speak.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen import Batch
from bench.stats import minus, ms, percentile, ratio

PATHS = ("direct", "relay", "tornado", "server")
LAYERS = ("relay", "tornado", "server")


@dataclass
class Cell:
    """Everything measured for one path at one concurrency, pooled over the interleaved rounds."""

    path: str
    concurrency: int
    profile: str | None = None  # a paced-upstream profile (bench.profiles), None for the main batches
    connections: str = "reused"  # "reused" (keep-alive, closed loop) or "new" (one per request)
    ttft: list[float] = field(default_factory=list)  # first content token
    first_event: list[float] = field(default_factory=list)
    pacing: list[float] = field(default_factory=list)  # |gap out - gap in| between content tokens
    total: list[float] = field(default_factory=list)
    requests: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    layer_cpu: float = 0.0
    upstream_cpu: float = 0.0
    tp_chunks: int = 0
    tp_wall: float = 0.0
    tp_failed: int = 0
    tp_cpu: float = 0.0  # the layer's CPU seconds in the throughput batches (gap 0, tp_tokens chunks)
    tp_done: int = 0

    def add_latency(self, batch: Batch, layer_cpu: float, upstream_cpu: float) -> None:
        for sample in batch.samples:
            self.requests += 1
            if sample.ok:
                self.ttft.append(sample.ttfc if sample.ttfc is not None else sample.ttft or 0.0)
                self.first_event.append(sample.ttft or 0.0)
                self.total.append(sample.total)
                self.pacing.extend(sample.pacing)
            else:
                self.failed += 1
                self.errors[sample.error or "unknown"] += 1
        self.layer_cpu += layer_cpu
        self.upstream_cpu += upstream_cpu

    def add_throughput(self, batch: Batch, layer_cpu: float = 0.0) -> None:
        self.tp_chunks += sum(s.chunks for s in batch.ok)
        self.tp_cpu += layer_cpu
        self.tp_done += len(batch.ok)
        self.tp_wall += batch.wall
        self.tp_failed += batch.failed
        for sample in batch.samples:
            if not sample.ok:
                self.errors[sample.error or "unknown"] += 1

    def figures(self) -> dict[str, Any]:
        """Milliseconds, chunks per second and CPU per request, as plain numbers."""
        done = max(1, self.requests - self.failed)
        return {
            "path": self.path,
            "concurrency": self.concurrency,
            "profile": self.profile,
            "connections": self.connections,
            "requests": self.requests,
            "failed": self.failed + self.tp_failed,
            "errors": dict(self.errors),
            "ttft_p50": ms(percentile(self.ttft, 50)),
            "ttft_p95": ms(percentile(self.ttft, 95)),
            "ttft_p99": ms(percentile(self.ttft, 99)),
            "first_event_p50": ms(percentile(self.first_event, 50)),
            "pacing_p50": ms(percentile(self.pacing, 50)),
            "pacing_p95": ms(percentile(self.pacing, 95)),
            "tokens_paced": len(self.pacing),
            "total_p50": ms(percentile(self.total, 50)),
            "total_p99": ms(percentile(self.total, 99)),
            "chunks_per_s": self.tp_chunks / self.tp_wall if self.tp_wall else None,
            "cpu_ms_per_request": self.layer_cpu * 1000 / done if self.path != "direct" else None,
            # The same, in the batches the chunks/s come from: what the layer's core is spent on there.
            "tp_cpu_ms_per_request": (self.tp_cpu * 1000 / self.tp_done
                                      if self.path != "direct" and self.tp_done else None),
            "upstream_cpu_ms_per_request": self.upstream_cpu * 1000 / done,
        }


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row.get("profile"), row.get("connections", "reused"), row["concurrency"]


def with_added(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row plus its added TTFT (this path's percentile minus the direct path's, same concurrency,
    profile and connections)."""
    direct = {_key(row): row for row in rows if row["path"] == "direct"}
    out = []
    for row in rows:
        base = direct.get(_key(row), {})
        extra = {f"added_{q}": minus(row[f"ttft_{q}"], base.get(f"ttft_{q}")) for q in ("p50", "p95", "p99")}
        out.append({**row, **extra})
    return out


def find(rows: list[dict[str, Any]], path: str, concurrency: int, profile: str | None = None,
         connections: str = "reused") -> dict[str, Any]:
    for row in rows:
        if row["path"] == path and _key(row) == (profile, connections, concurrency):
            return row
    return {}


@dataclass
class Target:
    """One goal from the issue, evaluated as a comparison with the relay in the same run."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pacing_targets(rows: list[dict[str, Any]], profile: str = "openai") -> list[Target]:
    """Issue 8's targets on reused connections with an OpenAI-like upstream (tokens 10 ms apart)."""
    out: list[Target] = []
    server, relay = find(rows, "server", 1, profile), find(rows, "relay", 1, profile)
    diff = minus(server.get("added_p50"), relay.get("added_p50"))
    out.append(Target(
        f"added first-content TTFT p50, c=1, {profile}, reused", "within 1 ms of the relay's",
        f"server {_fmt(server.get('added_p50'))} ms vs relay {_fmt(relay.get('added_p50'))} ms "
        f"(difference {_fmt(diff)} ms)",
        None if diff is None else diff <= 1.0,
    ))
    for c, allowed in ((1, 1.0), (50, 2.0)):
        server, relay = find(rows, "server", c, profile), find(rows, "relay", c, profile)
        diff = minus(server.get("pacing_p95"), relay.get("pacing_p95"))
        out.append(Target(
            f"token-gap deviation p95, c={c}, {profile}, reused", f"within {allowed:g} ms of the relay's",
            f"server {_fmt(server.get('pacing_p95'))} ms vs relay {_fmt(relay.get('pacing_p95'))} ms "
            f"(difference {_fmt(diff)} ms)",
            None if diff is None else diff <= allowed,
        ))
    return out


def targets(rows: list[dict[str, Any]], memory: dict[str, dict[str, Any]], hold: int,
            profile_rows: list[dict[str, Any]] | None = None) -> list[Target]:
    """The targets of issue 18 (and issues 5 and 8 before it), server against the aiohttp relay."""
    out: list[Target] = []

    server, relay = find(rows, "server", 1), find(rows, "relay", 1)
    diff = minus(server.get("added_p50"), relay.get("added_p50"))
    out.append(Target(
        "added TTFT p50, c=1", "within 1 ms of the relay's",
        f"server {_fmt(server.get('added_p50'))} ms vs relay {_fmt(relay.get('added_p50'))} ms "
        f"(difference {_fmt(diff)} ms)",
        None if diff is None else diff <= 1.0,
    ))

    server, relay = find(rows, "server", 200), find(rows, "relay", 200)
    # The relay's added p99 can be a fraction of a millisecond; a 1 ms floor keeps the ratio meaningful.
    relay_p99 = relay.get("added_p99")
    floor = None if relay_p99 is None else max(relay_p99, 1.0)
    r = ratio(server.get("added_p99"), floor)
    out.append(Target(
        "added TTFT p99, c=200", "at most 2x the relay's",
        f"server {_fmt(server.get('added_p99'))} ms vs relay {_fmt(relay_p99)} ms (x{_fmt(r)})",
        None if r is None else r <= 2.0,
    ))

    r = ratio(server.get("chunks_per_s"), relay.get("chunks_per_s"))
    bare = ratio(find(rows, "tornado", 200).get("chunks_per_s"), relay.get("chunks_per_s"))
    out.append(Target(
        "chunks/s, 200 streams, gap 0", "at least 70% of the relay's",
        f"server {_fmt(server.get('chunks_per_s'), 0)} vs relay {_fmt(relay.get('chunks_per_s'), 0)} "
        f"({_fmt(None if r is None else r * 100, 0)}%; bare Tornado relay "
        f"{_fmt(None if bare is None else bare * 100, 0)}%)",
        None if r is None else r >= 0.7,
    ))

    r = ratio(server.get("cpu_ms_per_request"), relay.get("cpu_ms_per_request"))
    out.append(Target(
        "CPU per request, c=200", "at most 1.5x the relay's",
        f"server {_fmt(server.get('cpu_ms_per_request'))} ms vs relay {_fmt(relay.get('cpu_ms_per_request'))} ms "
        f"(x{_fmt(r)})",
        None if r is None else r <= 1.5,
    ))

    mem = memory.get("server", {})
    kb = mem.get("kb_per_stream")
    relay_kb = memory.get("relay", {}).get("kb_per_stream")
    complete = mem.get("opened", 0) >= hold
    out.append(Target(
        f"{hold} open streams in the server", "at most 50 KB each",
        f"{_fmt(kb, 1)} KB per stream ({mem.get('opened', 0)} open; relay {_fmt(relay_kb, 1)} KB)",
        None if kb is None else (kb <= 50.0 and complete),
    ))
    return out + pacing_targets(profile_rows or [])
