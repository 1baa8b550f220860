"""Futures nobody awaits must still have their outcome read, or asyncio logs it as lost."""

from __future__ import annotations

import asyncio
from typing import Any


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """Done-callback that reads a future's exception, for futures whose failure is expected and moot."""
    if not future.cancelled():
        future.exception()
