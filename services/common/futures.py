"""Awaiting with a time limit that never swallows a cancel; futures nobody awaits have their outcome read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`await awaitable`, or TimeoutError past `seconds` (None: no limit); use it, not asyncio.wait_for.

    Python 3.11's wait_for returns the result when a cancel reaches it just as the awaited thing has
    finished: the cancel is lost, and a task stopped that way runs on (a worker's Redis write loop
    went back to waiting for events and the worker never exited). asyncio.timeout() does not lose it.
    """
    async with asyncio.timeout(seconds):
        return await awaitable


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """Done-callback that reads a future's exception, for futures whose failure is expected and moot."""
    if not future.cancelled():
        future.exception()
