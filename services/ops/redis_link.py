"""What every Redis user of this server shares: a client with hard timeouts, a back-off, a safe name."""

from __future__ import annotations

import random
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
    """Delays between reconnection attempts: doubling from `first` to `most`, with jitter."""

    def __init__(self, first: float = 0.25, most: float = 5.0) -> None:
        self.first = first
        self.most = most
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.most, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first


def describe(exc: BaseException) -> str:
    """An exception as a short reason with no URL in it (a URL may hold a password)."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({name})"
    return name


__all__ = ["UNAVAILABLE", "Backoff", "RedisError", "client", "describe", "where"]
