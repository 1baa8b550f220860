"""The station's position pushed to the consoles: one loop per process, through the hub, while anyone watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.console.hub import Hub
from services.iss.state import Tracker

log = logging.getLogger("iss_llm.console")

ISS_INTERVAL = 5.0


class StationFeed:
    """Asks the tracker for the position every `interval` while a console socket is open, and
    broadcasts it through the hub when it changed: one loop however many sockets there are."""

    def __init__(self, hub: Hub, tracker: Tracker, interval: float = ISS_INTERVAL) -> None:
        self.hub = hub
        self.tracker = tracker
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._last_at: object = None

    def wanted(self) -> None:
        """A console socket opened: run the loop if it is not running."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.hub.subscribers:
            with contextlib.suppress(Exception):
                state = await self.tracker.current()
                if state is not None:
                    data = state.to_dict()
                    if data.get("at") != self._last_at:
                        self._last_at = data.get("at")
                        self.hub.broadcast({"type": "iss_state", "id": "-", "t": time.time(), "state": data})
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
