"""The soak's stopped worker (issue 19, finding 5): a server with two workers, one SIGSTOPped mid-storm.

The worker watchdog (WORKER_TIMEOUT) must kill it and start another. Requests on the stopped
worker's connections fail (its keep-alive callers, and what it was streaming): they are the fault's
expected casualties, counted apart, and never more than the connections it held when stopped.
Every other request is judged as in the storm (nothing lost), and requests sent after its death
complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench import procs, storm

if TYPE_CHECKING:
    from bench.soak import Soak

# How a request on a worker that dies under it ends, as the storm's caller sees it: the connection
# reset or closed mid-answer (aiohttp's errors), or a stream closed without its [DONE].
_CASUALTY = re.compile(r"connection_\w+|no_done|no_finish_reason|not_sse")


@dataclass
class StoppedWorker:
    """The stopped-worker phase: which worker was stopped, how soon it was replaced, what its callers saw."""

    victim: int = 0
    victim_connections: int = 0  # caller connections it held when stopped: the most requests it can fail
    killed_after: float | None = None  # seconds from SIGSTOP to its death (the watchdog's SIGKILL)
    replaced: bool = False
    storm: storm.StormResult = field(default_factory=storm.StormResult)
    casualties: Counter[str] = field(default_factory=Counter)  # failed on the stopped worker's connections
    completed_after_kill: int = 0  # requests sent after its death that completed
    counted_lost: float | None = None  # requests its successor counted with outcome "lost" (/metrics)
    upstream_open: int = 0
    server_exit: int | None = None
    log_problems: list[str] = field(default_factory=list)
    timeout: float = 0.0

    def problems(self) -> list[str]:
        out = [f"stopped worker phase: lost {n}: {kind}" for kind, n in sorted(self.storm.lost.items())]
        if self.killed_after is None:
            out.append(f"the stopped worker (pid {self.victim}) was never killed")
        elif self.killed_after > self.timeout + 5.0:
            out.append(f"the stopped worker was killed {self.killed_after:.1f} s after it stopped "
                       f"(WORKER_TIMEOUT={self.timeout:g})")
        if not self.replaced:
            out.append("the stopped worker was not replaced")
        if sum(self.casualties.values()) > self.victim_connections:
            out.append(f"{sum(self.casualties.values())} requests failed on the stopped worker's "
                       f"{self.victim_connections} connections")
        if self.killed_after is not None and not self.completed_after_kill:
            out.append("no request sent after the stopped worker's death completed")
        if self.upstream_open:
            out.append(f"stopped worker phase: {self.upstream_open} upstream stream(s) still open")
        if self.server_exit not in (0, None):
            out.append(f"stopped worker phase: server exited with {self.server_exit} on SIGTERM")
        return out + self.log_problems

    def text(self) -> str:
        s = self.storm
        casualties = ", ".join(f"{k} {v}" for k, v in sorted(self.casualties.items())) or "none"
        killed = f"{self.killed_after:.1f} s" if self.killed_after is not None else "never"
        return (f"  stopped worker (2 workers, WORKER_TIMEOUT={self.timeout:g}): pid {self.victim} with "
                f"{self.victim_connections} caller connections, killed after {killed}, "
                f"{'replaced' if self.replaced else 'NOT replaced'}; {s.requests} requests: completed "
                f"{s.completed}, abandoned {s.abandoned}, errors {sum(s.errors.values())}, casualties "
                f"{sum(self.casualties.values())} ({casualties}), lost {sum(s.lost.values())}; "
                f"{self.completed_after_kill} completed after the kill; its successor counted "
                f"{'?' if self.counted_lost is None else f'{self.counted_lost:g}'} lost (outcome lost in /metrics)")


def split_casualties(result: storm.StormResult, stopped_at: float) -> Counter[str]:
    """Take out of `result.lost` the requests that failed at the connection once the worker was stopped
    (time.monotonic() `stopped_at`): the fault's casualties, returned by kind. A hang, a 500, a clean
    request's error, or anything that failed before the stop stays lost."""
    casualties: Counter[str] = Counter()
    for _, outcome in result.outcomes:
        if outcome.kind == "lost" and _CASUALTY.fullmatch(outcome.detail) and outcome.ended >= stopped_at:
            casualties[outcome.detail] += 1
            result.lost[outcome.detail] -= 1
    result.lost = +result.lost  # drop the zero counts
    return casualties


def _serving(log: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"worker (\d+) serving", log)}


def _started(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker \d+ started \(pid (\d+)\)", log)]


def _caller_connections(pid: int, port: int) -> int:
    with contextlib.suppress(psutil.Error):
        return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
                   if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)
    return 0


async def _until(predicate: object, timeout: float, every: float = 0.05) -> bool:
    """Poll `predicate()` until true, for at most `timeout` seconds."""
    assert callable(predicate)
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(every)
    return True


async def _lost_total(base: str) -> float | None:
    """The chat requests counted with outcome "lost" in /metrics (any worker answers for all), or None."""
    try:
        async with aiohttp.ClientSession() as session, session.get(
            base + "/metrics", timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "iss_llm_chat_requests_total" and sample.labels.get("outcome") == "lost")


async def run(soak: Soak, deadline: float) -> StoppedWorker:
    """Start the two-worker server, run the storm, stop a worker a third of the way in, judge."""
    cfg = soak.cfg
    result = StoppedWorker(timeout=cfg.worker_timeout)
    port = procs.free_port()
    # LOG_LEVEL info: the workers' "serving" and "started" lines are how the phase sees them come.
    env = soak.server_env(WORKER_TIMEOUT=f"{cfg.worker_timeout:g}", LOG_LEVEL="info")
    server = soak.kids.spawn("server-workers", [*procs.server_argv(port), "--workers", "2"], env, procs.ROOT, port)
    try:
        await asyncio.to_thread(soak.kids.wait_ready, server, 30.0)

        def log() -> str:
            return server.log_path.read_text(errors="replace")

        if not await _until(lambda: len(_serving(log())) == 2, 30.0):
            result.log_problems.append("stopped worker phase: two workers never served")
            return result
        items = storm.plan(cfg.worker_requests, cfg.abandon_share / 2, cfg.abandon_window, cfg.fault_share,
                           cfg.seed + 3)
        ended = 0
        third = asyncio.Event()

        def done(_: storm.Outcome) -> None:
            nonlocal ended
            ended += 1
            if ended >= len(items) // 3:
                third.set()

        url = server.url + "/v1/chat/completions"
        running = asyncio.create_task(storm.run_storm(url, items, cfg.worker_concurrency, cfg.request_timeout,
                                                      deadline, done))
        await asyncio.wait([running, asyncio.create_task(third.wait())], return_when=asyncio.FIRST_COMPLETED)
        workers = [child.pid for child in server.process().children()]
        # The worker holding the most of the storm's connections (ties: the first), stopped.
        victim = max(workers, key=lambda pid: _caller_connections(pid, port))
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        result.victim = victim
        # Read while it is stopped: it accepts nothing more, so these are all the connections it can fail.
        result.victim_connections = _caller_connections(victim, port)

        def dead() -> bool:
            try:
                return psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        killed_at = None
        if await _until(dead, cfg.worker_timeout + 15.0):
            killed_at = time.monotonic()
            result.killed_after = killed_at - stopped_at
        result.replaced = await _until(lambda: len(_started(log())) >= 3 and len(_serving(log())) >= 3, 30.0)
        result.storm = await running
        result.casualties = split_casualties(result.storm, stopped_at)
        result.counted_lost = await _lost_total(server.url)
        if killed_at is not None:
            result.completed_after_kill = sum(
                1 for _, outcome in result.storm.outcomes
                if outcome.kind == "completed" and outcome.ended - outcome.seconds > killed_at
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            if result.victim:
                os.kill(result.victim, signal.SIGKILL)  # never left stopped, whatever happened above
        result.server_exit = await asyncio.to_thread(soak.kids.stop, server, 15.0)
    await soak.upstream.wait_streams_closed(10.0)
    result.upstream_open = soak.upstream.open_streams
    text = log()
    if f"(pid {result.victim}) silent for" not in text:
        result.log_problems.append(f"stopped worker phase: no watchdog line for pid {result.victim}")
    for marker, count in procs.lost_in_log(text).items():
        result.log_problems.append(f"stopped worker phase: server log: {count} x {marker!r}")
    return result
