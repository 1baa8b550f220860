"""The hub: what the chat path publishes to and console sockets subscribe to, and its in-memory form.

A hub takes events from the chat path (`publish`: O(1), never blocks, never raises; the event is
only queued), sanitizes them once the chat path has yielded to the loop (so a long transcript's
sanitizing never delays a request to the upstream or a token to the caller), and delivers them, in
the order published, to this process's console sockets through a `Fanout`; `broadcast` sends
a station push to every socket. Implementations differ in where events travel between publish
and fan-out: straight through (`MemoryHub`, one process) or through Redis (`RedisHub`, every
worker of every host). Both pass the shared suite in tests/console/test_events.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

from services.console.fanout import Fanout, SubscriberPolicy, Subscription
from services.console.replay import BUFFER_BYTES, RECORD_BYTES
from services.console.sanitize import sanitize

log = logging.getLogger("iss_llm.events")

# Events published and not yet sanitized: drained every loop iteration, so this only bounds a
# publisher that never yields; past it the queue is drained there and then.
MAX_WAITING = 10_000


def worker_name() -> str:
    """This process as the console names it: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Hub(ABC):
    """Events from the chat path to every console socket; the replay a new socket starts from."""

    def __init__(
        self, buffer_size: int = 100, policy: SubscriberPolicy | None = None, *,
        record_bytes: int = RECORD_BYTES, buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.fanout = Fanout(buffer_size, policy, record_bytes=record_bytes, buffer_bytes=buffer_bytes)
        self.worker = worker_name()
        self._failures = 0
        self._waiting: deque[dict[str, Any]] = deque()
        self._drain_handle: asyncio.TimerHandle | None = None

    @property
    def buffer_size(self) -> int:
        return self.fanout.buffer_size

    @property
    def policy(self) -> SubscriberPolicy:
        return self.fanout.policy

    @property
    def subscribers(self) -> int:
        """Console sockets of this process."""
        return self.fanout.subscribers

    @property
    def published(self) -> int:
        """Events this process's sockets were fed (its own and, through Redis, other workers')."""
        return self.fanout.published

    @property
    def waiting(self) -> int:
        """Events published and not yet sanitized and delivered (until the publisher yields)."""
        return len(self._waiting)

    @property
    def backlog_bytes(self) -> int:
        return self.fanout.backlog_bytes

    def publish(self, event: dict[str, Any]) -> None:
        """Queue one event for every console. O(1), never blocks, never raises.

        It is sanitized and delivered once the caller yields to the loop (`drain`), after the
        task's own next step: a request goes to the upstream, or a token to the caller, first.
        """
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            return
        waiting = self._waiting
        if len(waiting) >= MAX_WAITING:
            self.drain()  # a publisher that never yields pays for its own events: none is lost
        waiting.append(event)
        if self._drain_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): deliver now
                self.drain()
                return
            # call_later(0), not call_soon: due timers join the ready queue behind what is already
            # there, so a task just scheduled (the upstream request) runs before the console's work.
            self._drain_handle = loop.call_later(0, self.drain)

    def drain(self) -> None:
        """Sanitize and deliver every queued event, in order (the readers of the hub call it first)."""
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        waiting = self._waiting
        while waiting:
            event = waiting.popleft()
            try:
                self._deliver(sanitize(event))
            except Exception:  # the console must never break a chat stream
                self._failures += 1
                if self._failures <= 3:
                    log.exception("console event dropped: could not publish it")

    @abstractmethod
    def _deliver(self, event: dict[str, Any]) -> None:
        """Send a sanitized event towards the fan-out (directly, or through the cluster)."""

    def broadcast(self, event: dict[str, Any]) -> None:
        """A station push to every console socket of this process (the latest one also greets new sockets)."""
        try:
            self.fanout.publish(event)
        except Exception:
            log.exception("console broadcast dropped")

    def subscribe(self) -> Subscription:
        """A new socket's subscription; read the replay with snapshot() right after, in the same tick."""
        self.drain()
        return self.fanout.subscribe()

    def snapshot(self) -> list[dict[str, Any]]:
        """The buffered requests, oldest first, aggregated (request, ISS block, text, outcome)."""
        self.drain()
        return self.fanout.snapshot()

    def flush(self) -> None:
        """Cut the pending batch now rather than at the end of the batch window."""
        self.drain()
        self.fanout.flush()

    def status(self) -> dict[str, Any]:
        """What the console shows about its feed: this worker, and where the events come from."""
        return {"feed": "local", "worker": self.worker}

    async def settle(self, timeout: float = 5.0) -> bool:
        """Wait until what was published so far is in the replay and the sockets' batches."""
        self.drain()
        self.fanout.flush()
        return True

    async def start(self) -> None:
        """Begin background work, if the implementation has any."""
        return None

    async def close(self) -> None:
        """Stop background work and drop subscribers."""
        self.drain()
        self.fanout.close()


class MemoryHub(Hub):
    """One process: published events go straight to the fan-out."""

    def _deliver(self, event: dict[str, Any]) -> None:
        self.fanout.publish(event)
