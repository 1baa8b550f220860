"""A deadline: one call when time runs out, unless it was cancelled first.

The chat path's time limits are deadlines on the task that answers: FIRST_TOKEN_TIMEOUT (armed when
the request arrives, cancelled by the first content token) and MAX_STREAM_SECONDS (a whole answer)
each call the handler's stop(reason), which cancels the task; the handler turns the reason into the
caller's answer and the recorded outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """Calls `expire` once, `seconds` from now (None: never), unless cancel() came first."""

    def __init__(self, seconds: float | None, expire: Callable[[], None]) -> None:
        self._expire = expire
        self._handle: asyncio.TimerHandle | None = None
        if seconds is not None:
            self._handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._handle = None
        expire, self._expire = self._expire, _nothing
        expire()

    def cancel(self) -> None:
        """Never call `expire`; let go of it (it usually points back at the deadline's owner)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._expire = _nothing


def _nothing() -> None:
    return None
