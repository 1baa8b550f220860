"""A shutdown that always ends: a cancel is never lost, and a collaborator that hangs is left behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app import build_services
from config import Settings
from services.common.futures import within
from services.console import MemoryHub


async def test_within_keeps_a_cancel_that_comes_just_as_the_awaited_thing_finishes():
    # The moment Python 3.11's asyncio.wait_for loses it: the awaited future has its result, and the
    # task awaiting it is cancelled before it ran again.
    awaited = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(within(awaited, 5))
    await asyncio.sleep(0)  # the task now waits on `awaited`
    awaited.set_result("done")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_within_gives_up_past_its_limit_and_none_waits_for_ever():
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(never, 0.05)
    assert never.cancelled()
    assert await within(asyncio.sleep(0, "answer"), None) == "answer"


class HangingHub(MemoryHub):
    """A console hub whose close() never returns, and ignores a cancel too."""

    async def close(self) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue


class Spy:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FailingSpy(Spy):
    async def close(self) -> None:
        raise RuntimeError("a detail that is not the log's business")


async def test_a_collaborator_that_hangs_or_fails_on_close_is_named_and_the_rest_still_close(caplog):
    services = build_services(Settings(), hub=HangingHub(5))
    services.login_throttle = FailingSpy()  # type: ignore[assignment]
    tracing = services.tracing = Spy()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="iss_llm"):
        await asyncio.wait_for(services.close(each_within=0.2), 10)
    assert tracing.closed, "the collaborators after the hanging one were not closed"
    lines = [record.getMessage() for record in caplog.records]
    assert "shutdown: closing the console hub took more than 0.2 s; left behind" in lines, lines
    assert "shutdown: closing the console login throttle failed (RuntimeError)" in lines, lines
    assert not any("detail" in line for line in lines), lines
