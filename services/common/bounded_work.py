"""Side work with a bound: at most `running` jobs at once in worker threads, at most `waiting` more in
line, and past that a refusal at once (the caller answers 503, a tool an error result).

A job whose caller gave up while it waited never runs; one already running finishes in its thread
and keeps its slot until then, so the bound holds whatever callers do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """No room: `running` jobs run and `waiting` more wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


class BoundedWork:
    """One small queue of jobs run in a thread pool of `running` threads."""

    def __init__(self, running: int = 2, waiting: int = 8, name: str = "work") -> None:
        self.running = running
        self.waiting = waiting
        self._pool = ThreadPoolExecutor(max_workers=running, thread_name_prefix=name)
        self._slots = asyncio.Semaphore(running)
        self._admitted = 0  # waiting or running (a running job counts until its thread is done)
        self.started = 0
        self.refused = 0
        self.peak = 0  # the most jobs ever admitted at once (never above running + waiting)

    @property
    def admitted(self) -> int:
        return self._admitted

    async def run(self, job: Callable[[], T]) -> T:
        """`job()` in a worker thread once a slot is free; QueueFull at once when the line is full."""
        if self._admitted >= self.running + self.waiting:
            self.refused += 1
            raise QueueFull(retry_after=1)
        self._admitted += 1
        self.peak = max(self.peak, self._admitted)
        try:
            await self._slots.acquire()
        except BaseException:
            self._admitted -= 1
            raise
        self.started += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, job)
        future.add_done_callback(self._finished)
        # A caller that leaves does not free the slot: the thread runs on until the job is done.
        return await asyncio.shield(future)

    def _finished(self, future: asyncio.Future[Any]) -> None:
        self._admitted -= 1
        self._slots.release()
        if not future.cancelled():
            future.exception()  # retrieved here: a caller that left never will

    def close(self) -> None:
        """Refuse what has not started; running jobs end on their own (the threads are not waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
