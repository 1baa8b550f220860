"""The soak: a speculative-inference storm with upstream faults, flapping ISS sources and hostile input.

    python -m bench.soak            # 2,000 requests, 300 generated bad inputs (about a minute)
    python -m bench.soak --quick    # 600 requests, 40 generated bad inputs (35-60 s)

The server runs in its own process; the fake upstream and the fake ISS sources run in this one,
so their counters (open upstream streams) are read directly. Loopback only, bounded in time.

The measured pass adds, to the warm-up pass's traffic, a pass-search flood (bench/passflood.py) and
requests a model answers with 1,000 iss_passes calls; the chat path's time to first token is
compared between the two passes. Then a second server with two workers serves a shorter storm
while one of its workers is stopped (SIGSTOP): the watchdog must kill and replace it, and only the
requests on that worker's connections may fail.

Exits 1 when a request was lost, a bad input got a 5xx or hung, anything leaked, or the first-token
p95 passed its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from tqdm import tqdm

from bench import badinput, passflood, procs, stopped_worker, storm
from bench.stats import percentile
from bench.stopped_worker import StoppedWorker
from services.upstream.tool_rounds import MAX_HELD_CALLS
from tests.fakes.iss_sources import SOURCES, FakeIssSources
from tests.fakes.openai_upstream import FakeUpstream, gzip_bomb

# A /healthz answer slower than this, during the traffic, counts as a stuck worker.
STUCK_SECONDS = 5.0


@dataclass
class SoakConfig:
    """The full soak by default; `quick()` is the version the test suite runs."""

    requests: int = 2000
    concurrency: int = 100
    abandon_share: float = 0.8
    abandon_window: float = 0.5
    fault_share: float = 0.1
    upstream_timeout: float = 2.0
    max_stream_seconds: float = 10.0  # a clean answer takes about 1.5 s, several under load
    hypothesis_examples: int = 300
    drip_callers: int = 5
    drip_pause: float = 0.03
    idle_flood: int = 100  # idle connections opened past the server's MAX_CONNECTIONS (in the warm-up pass:
    # their objects set the allocator's high-water mark, which the measured pass is compared to)
    iss_flap_every: float = 0.4
    memory_tolerance: float = 0.10
    warmup_share: float = 0.5  # the warm-up pass's size, as a share of the measured one
    max_seconds: float = 300.0
    seed: int = 5
    progress: bool = True
    # The pass-search flood of the measured pass: `flood_tasks` callers, each `flood_bursts` bursts of
    # `flood_burst` searches at once, at distinct places, most abandoned, up to `flood_pause` s apart.
    flood_tasks: int = 4
    flood_bursts: int = 10
    flood_burst: int = 30
    flood_pause: float = 0.8
    flood_abandon_share: float = 0.8
    # The /iss rate limit the soak's server runs with (per address; the flood has its own address).
    iss_rate_per_min: float = 120.0
    iss_rate_burst: int = 30
    tool_max_calls: int = 4  # ISS_TOOL_MAX_CALLS
    tool_result_bytes: int = 64 * 1024  # ISS_TOOL_RESULT_BYTES
    thousand_calls: int = 10  # measured-pass requests a model answers with 1,000 iss_passes calls
    # The stopped-worker phase: a server with 2 workers, WORKER_TIMEOUT `worker_timeout`, a storm of
    # `worker_requests`; one worker SIGSTOPped once a third of them ended.
    worker_requests: int = 400
    worker_concurrency: int = 30
    worker_timeout: float = 2.0
    # The bound on the chat path: the measured pass's first-token p95 (bench/chatprobe.py: clean requests
    # from their own process) may be at most the warm-up pass's (the same storm without the flood and
    # the 1,000-call model) plus `first_token_margin` seconds, or `first_token_ratio` times it if more.
    # Generous: the machine is shared, and a p95 of a few dozen samples moves with its load.
    first_token_margin: float = 0.75
    first_token_ratio: float = 2.0

    @classmethod
    def quick(cls) -> SoakConfig:
        # The passes each wait for their slowest request, a comments-only or dripping upstream cut at
        # MAX_STREAM_SECONDS; then the stopped-worker phase (about 15 s).
        return cls(requests=600, concurrency=60, hypothesis_examples=40, drip_callers=1, drip_pause=0.01,
                   warmup_share=1.0, max_stream_seconds=8.0, max_seconds=150.0,
                   flood_tasks=3, flood_bursts=4, flood_burst=25, thousand_calls=3,
                   worker_requests=150, worker_concurrency=20)

    @property
    def max_connections(self) -> int:
        """The server's MAX_CONNECTIONS: room for the traffic's busy connections (abandoned requests stay
        busy until the server notices, a few per caller), well under what the idle flood opens."""
        return 6 * self.concurrency

    @property
    def request_timeout(self) -> float:
        """No caller waits longer than this; anything slower counts as a hang."""
        return max(self.upstream_timeout + 6.0, self.max_stream_seconds + 4.0)


@dataclass
class Snapshot:
    """What the server holds at one moment: streams in flight, tasks, memory, descriptors, callers."""

    in_flight: int
    tasks: int
    rss: int
    fds: int
    callers: int


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    p50, p95 = percentile(values, 50) or 0.0, percentile(values, 95) or 0.0
    return f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (n={len(values)})"


@dataclass
class SoakReport:
    """Everything the soak saw; `problems()` is empty when nothing was lost or leaked."""

    seconds: float = 0.0
    storm: storm.StormResult = field(default_factory=storm.StormResult)
    bad: badinput.Probe = field(default_factory=badinput.Probe)
    iss_switches: Counter[str] = field(default_factory=Counter)
    health_checks: int = 0
    health_failures: int = 0
    health_slowest: float = 0.0
    before: Snapshot | None = None
    after: Snapshot | None = None
    upstream_open: int = 0
    upstream_aborted: int = 0
    server_exit: int | None = None
    leaks: list[str] = field(default_factory=list)
    warmup_problems: list[str] = field(default_factory=list)
    flood: passflood.PassFloodResult | None = None
    baseline_first_token: list[float] = field(default_factory=list)  # the warm-up pass's (no flood)
    probe_first_token: list[float] = field(default_factory=list)  # bench/chatprobe.py's samples
    probe_failures: int = 0
    probe_baseline: list[float] = field(default_factory=list)  # the same, in the warm-up pass
    probe_relay: list[float] = field(default_factory=list)  # their relay parts (upstream write to arrival)
    probe_relay_baseline: list[float] = field(default_factory=list)
    first_token_margin: float = 0.75
    first_token_ratio: float = 2.0
    largest_tool_round: int = 0  # bytes of the largest request upstream carrying the layer's tool results
    tool_round_bound: int = 0
    stopped: StoppedWorker | None = None

    def first_token_p95s(self) -> tuple[float | None, float | None]:
        """The chat probe's first-token p95 (without the floods, with them): seconds."""
        return percentile(self.probe_baseline, 95), percentile(self.probe_first_token, 95)

    def first_token_bound(self, calm: float) -> float:
        """The most the p95 with the floods may be, given the p95 without: seconds."""
        return max(calm + self.first_token_margin, calm * self.first_token_ratio)

    def problems(self) -> list[str]:
        out = [f"lost {n}: {kind}" for kind, n in sorted(self.storm.lost.items())]
        if self.flood is not None:
            out += [f"pass flood lost {n}: {kind}" for kind, n in sorted(self.flood.lost.items())]
        calm, busy = self.first_token_p95s()
        if self.flood is None:
            pass  # not the measured pass (the warm-up's own report, or none run yet): nothing to compare
        elif calm is None or busy is None:
            out.append("the chat probe timed no first token in a pass")
        elif busy > self.first_token_bound(calm):
            out.append(f"first-token p95 {busy * 1000:.0f} ms with the floods, {calm * 1000:.0f} ms without: "
                       f"over the bound ({self.first_token_bound(calm) * 1000:.0f} ms)")
        if self.flood is not None and self.probe_failures:  # the warm-up's idle flood may refuse the probe
            out.append(f"the chat probe's clean requests failed {self.probe_failures} times")
        if self.tool_round_bound and self.largest_tool_round > self.tool_round_bound:
            out.append(f"a tool round sent {self.largest_tool_round} bytes upstream (bound {self.tool_round_bound})")
        if self.stopped is not None:
            out += self.stopped.problems()
        out += [f"bad input answered badly: {failure}" for failure in self.bad.failures[:20]]
        if self.health_failures:
            out.append(f"/healthz failed {self.health_failures} times (server stuck or down)")
        if self.health_slowest > STUCK_SECONDS:
            out.append(f"/healthz took {self.health_slowest:.1f} s at worst (a stuck worker)")
        if self.server_exit not in (0, None):
            out.append(f"server exited with {self.server_exit} on SIGTERM")
        out += [f"warm-up pass: {problem}" for problem in self.warmup_problems]
        return out + self.leaks

    def text(self) -> str:
        s, bad = self.storm, self.bad
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "none"
        lost = ", ".join(f"{k} {v}" for k, v in sorted(s.lost.items())) or "none"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(bad.kinds.items()))
        lines = [
            f"soak: {s.requests} requests in {self.seconds:.1f} s",
            f"  completed {s.completed}, abandoned {s.abandoned}, errors {sum(s.errors.values())}, "
            f"lost {sum(s.lost.values())}; slowest answer {s.slowest:.2f} s",
            f"  errors by kind: {errors}",
            f"  lost by kind: {lost}",
            f"  bad input: {sum(bad.kinds.values())} cases: {kinds}",
            f"  ISS sources switched {sum(self.iss_switches.values())} times "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.iss_switches.items()))})",
            f"  /healthz: {self.health_checks} checks, {self.health_failures} failed, "
            f"slowest {self.health_slowest:.2f} s",
        ]
        if self.flood is not None:
            lines.append(f"  pass-search flood: {self.flood.text()}")
        thousand = ", ".join(f"{k} {v}" for k, v in sorted(s.thousand_calls.items())) or "none"
        lines.append(f"  1,000-call model: {sum(s.thousand_calls.values())} requests ({thousand}); largest tool "
                     f"round upstream {self.largest_tool_round / 1024:.0f} KB")
        lines.append(f"  first token (chat probe, its own process; the model answers at once): without the floods "
                     f"{_spread(self.probe_baseline)}, with them {_spread(self.probe_first_token)}; "
                     f"bound on p95: +{self.first_token_margin * 1000:.0f} ms or x{self.first_token_ratio:g}, "
                     f"whichever is more")
        lines.append(f"    of which the relay (upstream's write to arrival): without "
                     f"{_spread(self.probe_relay_baseline)}, with {_spread(self.probe_relay)}")
        lines.append(f"  first token, added to the model's delay (the storm's clean completed requests, seen from "
                     f"the busy soak process): without the floods {_spread(self.baseline_first_token)}, with them "
                     f"{_spread(s.first_token_added)}")
        if self.stopped is not None:
            lines.append(self.stopped.text())
        if self.before and self.after:
            b, a = self.before, self.after
            lines.append(
                f"  server before -> after: in flight {b.in_flight} -> {a.in_flight}, asyncio tasks {b.tasks} -> "
                f"{a.tasks}, RSS {b.rss / 2**20:.1f} -> {a.rss / 2**20:.1f} MB, fds {b.fds} -> {a.fds}, "
                f"caller connections {b.callers} -> {a.callers}"
            )
        lines.append(f"  upstream streams still open: {self.upstream_open} (aborted by the server: "
                     f"{self.upstream_aborted})")
        lines.append(f"  leaks found: {len(self.leaks)}" + (": " + "; ".join(self.leaks) if self.leaks else ""))
        problems = self.problems()
        lines.append("result: OK" if not problems else "result: FAILED\n  " + "\n  ".join(problems))
        return "\n".join(lines)


class Soak:
    """One soak run: the fakes here, the server in a child process, the traffic, the checks."""

    def __init__(self, cfg: SoakConfig, kids: procs.Children) -> None:
        self.cfg = cfg
        self.kids = kids
        self.report = SoakReport()
        self.upstream = FakeUpstream(tokens=5)
        self.iss = FakeIssSources()
        self.rng = random.Random(cfg.seed)
        self.server: procs.Child | None = None
        self.progress: tqdm | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return self.server.url

    async def start(self) -> None:
        badinput.warm_hypothesis()  # before any fake has to answer
        gzip_bomb(storm.FAULTS["gzip_bomb"]["bytes"], b": the same comment again\n")  # built once, before the storm
        await self.upstream.start()
        await self.iss.start()
        port = procs.free_port()
        # Started from the loop's thread, which lives as long as the soak: the server dies with the
        # thread that starts it (procs.die_with_parent), and an executor's may end at any time.
        self.server = self.kids.spawn("server", procs.server_argv(port), self.server_env(), procs.ROOT, port)
        # Waited for off the event loop: the fakes here must answer the server while it starts.
        await asyncio.to_thread(self.kids.wait_ready, self.server, 30.0)

    def server_env(self, **extra: str) -> dict[str, str]:
        return procs.server_env(
            f"http://127.0.0.1:{self.upstream.port}", self.kids.log_dir / "iss-cache",
            ISS_SOURCES="open-notify,wheretheiss,tle",
            ISS_API_URL=self.iss.url("open-notify"),
            WHERETHEISS_URL=self.iss.url("wheretheiss"),
            TLE_URL=self.iss.url("celestrak"),
            ISS_TIMEOUT="0.5",
            ISS_REFRESH_INTERVAL="0.5",
            UPSTREAM_TIMEOUT=str(self.cfg.upstream_timeout),
            KEEPALIVE_INTERVAL="1",
            MAX_CONNECTIONS=str(self.cfg.max_connections),
            MAX_STREAM_SECONDS=str(self.cfg.max_stream_seconds),
            # The upstream bounds scaled down: the same paths, less memory churn to tell from a leak.
            UPSTREAM_MAX_BYTES=str(1024 * 1024),
            UPSTREAM_MAX_EVENT_BYTES=str(256 * 1024),
            ISS_RATE_PER_MIN=str(self.cfg.iss_rate_per_min),
            ISS_RATE_BURST=str(self.cfg.iss_rate_burst),
            ISS_TOOL_MAX_CALLS=str(self.cfg.tool_max_calls),
            ISS_TOOL_RESULT_BYTES=str(self.cfg.tool_result_bytes),
            LOG_LEVEL="warning",
        ) | extra

    async def close(self) -> None:
        self.iss.fail_all("ok")
        await self.iss.close()
        await self.upstream.close()

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.base + "/healthz", timeout=aiohttp.ClientTimeout(total=5)) as response:
            return await response.json()

    async def snapshot(self, session: aiohttp.ClientSession) -> Snapshot:
        assert self.server is not None
        health = await self.health(session)
        process = self.server.process()
        port = self.server.port
        callers = sum(
            1 for c in process.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )
        return Snapshot(
            in_flight=health["chat"]["in_flight"],
            tasks=health.get("asyncio_tasks", -1),
            rss=process.memory_info().rss,
            fds=process.num_fds(),
            callers=callers,
        )

    async def probe(self, module: str, stop: asyncio.Event) -> dict[str, Any]:
        """Run `module` (a probe) against the server from a separate process until `stop`; its JSON line."""
        probe = await asyncio.create_subprocess_exec(
            procs.PYTHON, "-m", module, self.base, "--seconds", str(self.cfg.max_seconds),
            cwd=procs.ROOT, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=procs.die_with_parent,
        )
        try:
            await stop.wait()
        finally:
            if probe.returncode is None:
                probe.terminate()
            out, _ = await asyncio.wait_for(probe.communicate(), 15.0)
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    async def time_first_tokens(self, report: SoakReport, stop: asyncio.Event) -> None:
        """Clean chat requests one after another from a separate process, each timed from the upstream's
        first content chunk to its arrival there (bench/chatprobe.py)."""
        result = await self.probe("bench.chatprobe", stop)
        report.probe_first_token += [float(value) for value in result["samples"]]
        report.probe_relay += [float(value) for value in result["relay"]]
        report.probe_failures += int(result["failures"])

    async def monitor(self, report: SoakReport, stop: asyncio.Event) -> None:
        """Ping /healthz every 250 ms from a separate process (this one is busy with the traffic and
        hypothesis): a stuck worker shows up as a slow or failed answer."""
        result = await self.probe("bench.healthprobe", stop)
        report.health_checks += int(result["checks"])
        report.health_failures += int(result["failures"])
        report.health_slowest = max(report.health_slowest, float(result["slowest"]))

    async def flap_iss(self, report: SoakReport, stop: asyncio.Event) -> None:
        """Break and heal the ISS sources at random while the storm runs."""
        modes = ("500", "hang", "drop", "malformed", "ok", "ok")
        while not stop.is_set():
            source, mode = self.rng.choice(SOURCES), self.rng.choice(modes)
            self.iss.fail(source, mode)
            report.iss_switches[mode] += 1
            await asyncio.sleep(self.cfg.iss_flap_every)
        self.iss.fail_all("ok")

    def tick(self, *_: object) -> None:
        if self.progress is not None:
            self.progress.update(1)

    async def traffic(self, report: SoakReport, requests: int, examples: int, seed: int, deadline: float,
                      flood: int = 0, floods: bool = False) -> None:
        """The storm, the ISS flapping, the corpus and drips, and hypothesis, all at once; with `floods`,
        the pass-search flood and the 1,000-call model too."""
        cfg = self.cfg
        assert self.server is not None
        port = self.server.port
        items = storm.plan(requests, cfg.abandon_share, cfg.abandon_window, cfg.fault_share, seed,
                           thousand_calls=cfg.thousand_calls if floods else 0)
        stop = asyncio.Event()
        stop_thread = threading.Event()
        background = [asyncio.create_task(self.monitor(report, stop)), asyncio.create_task(self.flap_iss(report, stop)),
                      asyncio.create_task(self.time_first_tokens(report, stop))]
        hostile = badinput.corpus() + badinput.drips(cfg.drip_callers, cfg.drip_pause)
        thread = asyncio.create_task(asyncio.to_thread(
            badinput.run_hypothesis, port, examples, seed, 10.0, stop_thread, report.bad, self.tick,
        ))
        try:
            storm_task = asyncio.create_task(storm.run_storm(
                self.base + "/v1/chat/completions", items, cfg.concurrency, cfg.request_timeout, deadline, self.tick))
            flood_task = asyncio.create_task(self.pass_flood(seed, deadline)) if floods else None
            await asyncio.gather(
                badinput.run_corpus(port, hostile, 15.0, report.bad, on_done=self.tick),
                badinput.idle_flood(port, flood, 2.0, report.bad),
            )
            report.storm = await storm_task
            if flood_task is not None:
                report.flood = await flood_task
            try:
                await asyncio.wait_for(asyncio.shield(thread), max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                stop_thread.set()
                await thread
        finally:
            stop_thread.set()
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
        self.iss.fail_all("ok")

    async def pass_flood(self, seed: int, deadline: float, tasks: int | None = None, bursts: int | None = None,
                         address: str = passflood.FLOOD_ADDRESS) -> passflood.PassFloodResult:
        cfg = self.cfg
        plan = passflood.plan(tasks or cfg.flood_tasks, bursts or cfg.flood_bursts, cfg.flood_burst,
                              cfg.flood_abandon_share, seed)
        return await passflood.run_pass_flood(self.base, plan, cfg.flood_pause, cfg.request_timeout, deadline, seed,
                                              address)

    async def prime(self, deadline: float) -> None:
        """After the warm-up pass (the baseline, without them): a little of the flood and two 1,000-call
        requests, so the measured pass finds their pools, caches and imports already made (a leak is
        growth past what the warm-up left)."""
        flood = await self.pass_flood(self.cfg.seed + 7, deadline, tasks=1, bursts=2, address="127.0.0.3")
        self.report.warmup_problems += [f"pass flood lost {n}: {kind}" for kind, n in sorted(flood.lost.items())]
        items = [storm.Planned(i, 3, 0.0, 0.0, "thousand_calls", None) for i in range(2)]
        primed = await storm.run_storm(self.base + "/v1/chat/completions", items, 2, self.cfg.request_timeout,
                                       deadline)
        self.report.warmup_problems += [f"lost {n}: {kind}" for kind, n in sorted(primed.lost.items())]

    async def refill_ring(self) -> None:
        """Small quick requests through the console's ring buffer (the last 100 requests, kept by
        design), so the memory compared is not held by one multi-megabyte corpus request."""
        items = [storm.Planned(i, 3, 0.0, 0.0, None, None) for i in range(120)]
        await storm.run_storm(self.base + "/v1/chat/completions", items, 10, self.cfg.request_timeout,
                              time.monotonic() + 30.0)

    async def settle(self, session: aiohttp.ClientSession, before: Snapshot) -> Snapshot:
        """Wait (at most 20 s) for the server to let go of everything the traffic made it hold."""
        await self.upstream.wait_streams_closed(10.0)
        await self.refill_ring()
        deadline = time.monotonic() + 20.0
        after = await self.snapshot(session)
        while time.monotonic() < deadline:
            if (after.in_flight == 0 and after.tasks <= before.tasks and after.callers <= before.callers
                    and after.rss <= before.rss * (1 + self.cfg.memory_tolerance)):
                break
            await asyncio.sleep(0.5)
            after = await self.snapshot(session)
        return after

    def check_leaks(self, before: Snapshot, after: Snapshot) -> None:
        leaks = self.report.leaks
        self.report.upstream_open = self.upstream.open_streams
        self.report.upstream_aborted = self.upstream.aborted_streams
        if self.upstream.open_streams:
            leaks.append(f"{self.upstream.open_streams} upstream stream(s) still open")
        if after.in_flight:
            leaks.append(f"{after.in_flight} chat request(s) still in flight")
        if after.tasks > before.tasks:
            leaks.append(f"asyncio tasks {before.tasks} -> {after.tasks}")
        if after.callers > before.callers:  # the snapshot's own /healthz connection is one of them
            leaks.append(f"caller connections {before.callers} -> {after.callers}")
        if after.rss > before.rss * (1 + self.cfg.memory_tolerance):
            leaks.append(f"RSS {before.rss / 2**20:.1f} -> {after.rss / 2**20:.1f} MB "
                         f"(over {self.cfg.memory_tolerance:.0%})")

    def check_server_log(self, text: str) -> None:
        """What the server logged that no code handled: a lost task error, any traceback."""
        for marker, count in procs.lost_in_log(text).items():
            self.report.leaks.append(f"server log: {count} x {marker!r}")
        forged = sum(1 for line in text.splitlines() if line.startswith(storm.FORGED))
        if forged:
            self.report.leaks.append(f"server log: {forged} line(s) forged by an upstream's error message")

    async def run(self) -> SoakReport:
        cfg = self.cfg
        t0 = time.monotonic()
        deadline = t0 + cfg.max_seconds
        await self.start()
        assert self.server is not None
        async with aiohttp.ClientSession() as session:
            # Warm-up: a pass of the same traffic, so the baseline already has the server's pools and
            # the allocator's high-water mark; a leak then shows as growth over the measured pass.
            warm = SoakReport()
            await self.traffic(warm, max(150, int(cfg.requests * cfg.warmup_share)),
                               max(20, int(cfg.hypothesis_examples * cfg.warmup_share)), cfg.seed + 1, deadline,
                               flood=cfg.max_connections + cfg.idle_flood)
            self.report.warmup_problems = warm.problems()
            self.report.baseline_first_token = warm.storm.first_token_added
            self.report.probe_baseline = warm.probe_first_token
            self.report.probe_relay_baseline = warm.probe_relay
            await self.prime(deadline)
            await self.upstream.wait_streams_closed(10.0)
            await self.refill_ring()
            await asyncio.sleep(1.0)
            before = await self.snapshot(session)
            total = cfg.requests + cfg.hypothesis_examples + len(badinput.corpus()) + 4 * cfg.drip_callers
            with tqdm(total=total, unit="req", disable=not cfg.progress, file=sys.stderr, mininterval=0.5) as bar:
                self.progress = bar
                await self.traffic(self.report, cfg.requests, cfg.hypothesis_examples, cfg.seed, deadline - 30.0,
                                   floods=True)
            self.progress = None
            after = await self.settle(session, before)
        self.report.before, self.report.after = before, after
        self.check_leaks(before, after)
        assert self.server is not None
        self.report.server_exit = await asyncio.to_thread(self.kids.stop, self.server, 15.0)
        self.check_server_log(self.server.log_path.read_text(errors="replace"))
        self.report.first_token_margin = cfg.first_token_margin
        self.report.first_token_ratio = cfg.first_token_ratio
        self.report.largest_tool_round = self.upstream.largest_tool_round
        # A round's request upstream: the caller's messages and the tools offered (a few KB), the
        # results (ISS_TOOL_RESULT_BYTES), and for each call held (MAX_HELD_CALLS) its echo and error.
        self.report.tool_round_bound = cfg.tool_result_bytes + MAX_HELD_CALLS * 1024 + 16 * 1024
        self.report.stopped = await stopped_worker.run(self, deadline)
        self.report.seconds = time.monotonic() - t0
        return self.report


async def _run(cfg: SoakConfig, kids: procs.Children) -> SoakReport:
    soak = Soak(cfg, kids)
    try:
        return await soak.run()
    finally:
        await soak.close()


def run_soak(cfg: SoakConfig, log_dir: Path | None = None, handle_signals: bool = False) -> SoakReport:
    """Run one soak to the end (or its time limit) and return what it saw; children always stopped."""
    procs.raise_nofile(8192)
    # The fake upstream (here, in aiohttp) logs a traceback each time the server abandons a request
    # before its headers are out: that is the abandonment working, not a failure.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with procs.Children(log_dir or Path(tempfile.mkdtemp(prefix="iss-llm-soak-"))) as kids:
        if not handle_signals:
            return asyncio.run(_run(cfg, kids))
        with procs.stop_on_signals(kids):
            return asyncio.run(_run(cfg, kids))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="soak: storm, faults, flapping ISS sources, bad input")
    parser.add_argument("--quick", action="store_true", help="600 requests, 40 generated bad inputs")
    parser.add_argument("--requests", type=int, help="storm size (default 2000)")
    parser.add_argument("--concurrency", type=int, help="requests in flight at once (default 100)")
    parser.add_argument("--examples", type=int, help="hypothesis-generated bad inputs (default 300)")
    parser.add_argument("--seed", type=int, help="seed for the plan and hypothesis (default 5)")
    parser.add_argument("--max-seconds", type=float, help="hard time limit (default 240)")
    args = parser.parse_args(argv)
    cfg = SoakConfig.quick() if args.quick else SoakConfig()
    for name, attr in (("requests", "requests"), ("concurrency", "concurrency"), ("examples", "hypothesis_examples"),
                       ("seed", "seed"), ("max_seconds", "max_seconds")):
        if getattr(args, name) is not None:
            setattr(cfg, attr, getattr(args, name))
    try:
        report = run_soak(cfg, handle_signals=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the server and the fakes are stopped", file=sys.stderr)
        return 130
    print(report.text())
    return 0 if not report.problems() else 1


if __name__ == "__main__":
    sys.exit(main())
