"""Helpers the process tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil

from services.ops.supervisor import sigterm_pending


def connection_owner(writer: asyncio.StreamWriter, pids: set[int]) -> int:
    """Which of these processes holds the server side of this client connection (0: none), from the
    kernel's table of their sockets."""
    local_port = writer.get_extra_info("sockname")[1]
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local_port:
                return pid
    return 0


def sigterm_reached(pid: int) -> bool:
    """A SIGTERM sent to this process is pending in it (blocked, or the process is frozen), or it has
    already ended it."""
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return True
    return sigterm_pending(pid) or not psutil.pid_exists(pid)


class TrackerOverride:
    """The real tracker, with what a subclass defines put in place of the real methods."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Steps:
    """A long test's steps, each with its own deadline and all within the test's budget (set below the
    per-test limit): when one runs out, or an assertion inside it fails, the failure names the step,
    the steps done before it with their times, and what the server printed last, instead of only
    "timed out after 60 s"."""

    def __init__(self, budget: float, output: Callable[[], str] = lambda: "") -> None:
        self.end = time.monotonic() + budget
        self.output = output
        self.done: list[tuple[str, float]] = []

    @contextlib.asynccontextmanager
    async def step(self, name: str, seconds: float) -> AsyncIterator[None]:
        started = time.monotonic()
        limit = min(seconds, self.end - started)
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                yield
        except TimeoutError:
            raise AssertionError(self._report(f"step {name!r} did not finish in {limit:.1f} s "
                                              f"(its limit {seconds:.0f} s, within the test's budget)")) from None
        except AssertionError as failure:
            raise AssertionError(self._report(f"step {name!r} failed: {failure}")) from None
        self.done.append((name, round(time.monotonic() - started, 1)))

    def _report(self, what: str) -> str:
        done = ", ".join(f"{name} {seconds} s" for name, seconds in self.done) or "none"
        tail = self.output()[-3000:]
        return f"{what}; steps done: {done}" + (f"\nlast output:\n{tail}" if tail else "")
