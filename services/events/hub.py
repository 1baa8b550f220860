"""The hub: what the chat path publishes to and console sockets subscribe to, and its in-memory form.

A hub takes events from the chat path (`publish`, O(1), never blocks, never raises), sanitizes
them, and delivers them to this process's console sockets through a `Fanout`; `broadcast` sends
a station push to every socket. Implementations differ in where events travel between publish
and fan-out: straight through (`MemoryHub`, one process) or through Redis (`RedisHub`, every
worker of every host). Both pass the shared suite in tests/test_events.py.
"""

from __future__ import annotations

import logging
import os
import socket
from abc import ABC, abstractmethod
from typing import Any

from services.events.fanout import Fanout, SubscriberPolicy, Subscription
from services.events.sanitize import sanitize

log = logging.getLogger("iss_llm.events")


def worker_name() -> str:
    """This process as the console names it: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Hub(ABC):
    """Events from the chat path to every console socket; the replay a new socket starts from."""

    def __init__(self, buffer_size: int = 100, policy: SubscriberPolicy | None = None) -> None:
        self.fanout = Fanout(buffer_size, policy)
        self.worker = worker_name()
        self._failures = 0

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
    def backlog_bytes(self) -> int:
        return self.fanout.backlog_bytes

    def publish(self, event: dict[str, Any]) -> None:
        """Sanitize one event and send it on its way to every console. O(1), never blocks, never raises."""
        try:
            if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                return
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
        return self.fanout.subscribe()

    def snapshot(self) -> list[dict[str, Any]]:
        """The buffered requests, oldest first, aggregated (request, ISS block, text, outcome)."""
        return self.fanout.snapshot()

    def flush(self) -> None:
        """Cut the pending batch now rather than at the end of the batch window."""
        self.fanout.flush()

    def status(self) -> dict[str, Any]:
        """What the console shows about its feed: this worker, and where the events come from."""
        return {"feed": "local", "worker": self.worker}

    async def settle(self, timeout: float = 5.0) -> bool:
        """Wait until what was published so far is in the replay and the sockets' batches."""
        self.fanout.flush()
        return True

    async def start(self) -> None:
        """Begin background work, if the implementation has any."""
        return None

    async def close(self) -> None:
        """Stop background work and drop subscribers."""
        self.fanout.close()


class MemoryHub(Hub):
    """One process: published events go straight to the fan-out."""

    def _deliver(self, event: dict[str, Any]) -> None:
        self.fanout.publish(event)
