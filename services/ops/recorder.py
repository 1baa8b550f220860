"""What the server records, as the rest of the code sees it: the `Recorder` protocol, and
`NullMetrics`, the recorder of METRICS_ENABLED=false. The Prometheus one is services/ops/metrics.py.

This module imports no metrics library: a handler or a part typed against a Recorder does not load
prometheus_client (which must be imported only once its mode is chosen: services/ops/multiprocess.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Timed(Protocol):
    """What one chat request's record offers the metrics once it ended (an Exchange); times are
    time.monotonic() readings: started (received), upstream asked, its first content token, written, ended.
    The ids (sanitized, at most 128 characters each) go on the exemplars; trace_id is None when untraced."""

    request_id: str
    conversation_id: str | None
    path: str
    stream: bool
    outcome: Any
    status: int | None
    upstream_model: str | None
    error_code: str | None
    tokens: int
    started: float
    upstream_sent: float | None
    first_token_at: float | None
    first_written: float | None
    ended: float | None

    @property
    def trace_id(self) -> str | None: ...


class Recorder(Protocol):
    """Every figure the server records, and the /metrics exposition. The chat path's calls each take
    a handful of microseconds and never wait."""

    def watch_iss(self, health: Callable[[], dict[str, Any]]) -> None:
        """The ISS figures, read from `health()` (the tracker's report) at scrape time."""
        ...

    async def start(self) -> None:
        """Background work, if any (with workers: the ISS fetch counts copied every few seconds)."""
        ...

    async def close(self) -> None: ...

    def started(self) -> None:
        """A chat request began (in flight)."""
        ...

    def ended(self) -> None:
        """A chat request is no longer in flight."""
        ...

    def iss_looked_up(self, seconds: float) -> None: ...

    def keepalive(self) -> None: ...

    def outcome(self, record: Timed) -> None:
        """One chat request ended: count it and observe its timings, once (from Exchange.end)."""
        ...

    def refused(self, route: str, outcome: str, status: int) -> None:
        """A chat request answered before it began (bad key, bad body, too large, shutting down)."""
        ...

    def lost(self, route: str, count: int = 1) -> None:
        """Chat requests a dead worker had open (counted by the worker that replaced it)."""
        ...

    def console_opened(self) -> None: ...

    def console_closed(self) -> None: ...

    def console_resynced(self, reason: str, dropped: int) -> None: ...

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and Content-Type for a scrape."""
        ...


class NullMetrics:
    """METRICS_ENABLED=false: a Recorder that records nothing."""

    def watch_iss(self, health: Callable[[], dict[str, Any]]) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def started(self) -> None:
        return None

    def ended(self) -> None:
        return None

    def iss_looked_up(self, seconds: float) -> None:
        return None

    def keepalive(self) -> None:
        return None

    def outcome(self, record: Timed) -> None:
        return None

    def refused(self, route: str, outcome: str, status: int) -> None:
        return None

    def lost(self, route: str, count: int = 1) -> None:
        return None

    def console_opened(self) -> None:
        return None

    def console_closed(self) -> None:
        return None

    def console_resynced(self, reason: str, dropped: int) -> None:
        return None

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        return b"", "text/plain"
