"""What every Redis user of this server shares: a client with hard timeouts, a back-off, a safe name."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

# Everything that means "Redis is not answering right now" to a caller that must carry on without it.
UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def client(url: str, timeout: float) -> redis.Redis:
    """A client whose every command gives up after `timeout` seconds (a slow Redis is a down Redis)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        health_check_interval=0,
        max_connections=8,
    )


def where(url: str) -> str:
    """The Redis endpoint for a log line: host, port and database, never the credentials."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        return f"{parts.hostname or '?'}:{parts.port or 6379}{parts.path or ''}"
    except ValueError:
        return "redis"


class Backoff:
    """Delays between reconnection attempts: doubling from `first`, with jitter.

    A link that cannot connect is tried again at most `most` seconds apart. A link that connects
    and then fails before `healthy_after` seconds (Redis at maxmemory refusing every write, a proxy
    that drops it) is flapping: each cycle costs a reload and a resync, so its delay keeps doubling
    across those cycles, up to `flapping_most`. Only a link that stayed up for `healthy_after`
    seconds starts again from `first`.
    """

    def __init__(
        self, first: float = 0.25, most: float = 5.0, *, flapping_most: float = 60.0,
        healthy_after: float = 30.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first = first
        self.most = most
        self.flapping_most = max(most, flapping_most)
        self.healthy_after = healthy_after
        self._clock = clock
        self._next = first
        self._up_since: float | None = None

    def connected(self) -> None:
        """The link is up: its delay resets once it has stayed up for `healthy_after` seconds."""
        self._up_since = self._clock()

    def next(self) -> float:
        """The delay before the next attempt (the link is down)."""
        cap = self.most
        if self._up_since is not None:
            if self._clock() - self._up_since >= self.healthy_after:
                self._next = self.first
            else:
                cap = self.flapping_most  # it connected and failed again at once
        self._up_since = None
        delay = min(self._next, cap)
        self._next = min(cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first
        self._up_since = None


class LogEvery:
    """At most one log line per `interval` seconds for a recurring condition, with how many were
    left out since the last one (a Redis refusing every write must not log at the rate it refuses)."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def due(self) -> int | None:
        """None when this occurrence is not to be logged; else how many were left out before it."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return None
        self._last = now
        left_out, self.suppressed = self.suppressed, 0
        return left_out


def describe(exc: BaseException) -> str:
    """An exception as a short reason with no URL in it (a URL may hold a password)."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({name})"
    return name


__all__ = ["UNAVAILABLE", "Backoff", "LogEvery", "RedisError", "client", "describe", "where"]
