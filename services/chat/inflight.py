"""The chat requests in progress: so a shutdown can drain them, then end them, and count how they ended."""

from __future__ import annotations

import asyncio
from typing import Protocol

from services.chat.endings import Outcome
from services.common.futures import within
from services.ops.recorder import NullMetrics, Recorder


class Request(Protocol):
    """What the registry needs of a request in flight: a way to end it past the drain timeout."""

    def end_for_shutdown(self) -> None: ...


class Inflight:
    """Chat requests in progress (so shutdown can drain, then end them) and how they ended."""

    def __init__(self, metrics: Recorder | None = None) -> None:
        self.metrics = metrics or NullMetrics()
        self.draining = False
        self.active: dict[Request, tuple[str, str] | None] = {}  # each with (its console id, its route)
        self.outcomes: dict[str, int] = {outcome.value: 0 for outcome in Outcome}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return len(self.active)

    def enter(self, request: Request, record: tuple[str, str] | None = None) -> None:
        """A request began; `record` is (its console id, its route), named in the worker's heartbeat."""
        self.active[request] = record
        self._idle.clear()
        self.metrics.started()

    def leave(self, request: Request, outcome: str | None = None) -> None:
        if outcome:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if request in self.active:
            del self.active[request]
            self.metrics.ended()
        if not self.active:
            self._idle.set()

    def open_requests(self) -> list[tuple[str, str]]:
        """The requests open now, as (console id, route), for the heartbeat: should this worker die,
        the one that replaces it closes them (services/chat/lost.py)."""
        return [record for record in self.active.values() if record is not None]

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await within(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def end_all(self) -> None:
        """Past the drain timeout: each request ends its answer with an error event."""
        for request in list(self.active):
            request.end_for_shutdown()
