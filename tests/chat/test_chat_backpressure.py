"""A caller that stops reading slows the answer down to its pace: the server stops reading the
upstream once the socket to the caller is full, and never holds the whole answer in memory.

Time bounds: the stall is seen as the upstream writing nothing more for a second (what a stall is);
every other wait is a ceiling on polling, set well beyond what a busy machine needs.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import open_stream

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
WORD = "x" * 1000
TOKENS = 50_000  # about 57 MB of events: far more than the sockets between can hold


def _written(upstream) -> int:
    return sum(len(payload) for _, payload in upstream.timeline[-1])


async def _until(predicate, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _stalled(upstream, quiet: float, limit: float) -> bool:
    """True once the upstream wrote nothing for `quiet` seconds; False if it finished, or kept
    writing past `limit` seconds."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if upstream.completed_streams:
            return False
        now = _written(upstream)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
        await asyncio.sleep(0.05)
    return False


# An answer this long is allowed here (the default bound on an answer is 16 MB).
@pytest.mark.parametrize("overrides", [{"upstream_max_bytes": 128 * 1024 * 1024}])
async def test_a_caller_that_stops_reading_stalls_the_upstream_and_nothing_piles_up(overrides, base_url, upstream, app):
    reader, writer, _ = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": TOKENS, "words": [WORD]}},
    )
    total = TOKENS * (len(WORD) + 150)
    try:
        # The caller reads nothing more: the sockets fill, then the server must stop reading.
        assert await _stalled(upstream, quiet=1.0, limit=30.0), (
            f"the upstream was never held back: {_written(upstream)} bytes written, "
            f"completed={upstream.completed_streams}")
        held = _written(upstream)
        assert held < total / 3, held  # what the kernel's socket buffers hold, not the answer
        assert upstream.open_streams == 1 and upstream.completed_streams == 0
        # The caller reads again: the upstream is read again, at the caller's pace.
        for _ in range(64):
            assert await asyncio.wait_for(reader.read(1 << 16), 10), "connection closed"
        assert await _until(lambda: _written(upstream) > held, 10), "the upstream stayed stalled"
    finally:
        writer.close()


@pytest.mark.parametrize("overrides", [{"upstream_max_bytes": 128 * 1024 * 1024}])
async def test_a_caller_who_leaves_while_a_write_is_blocked_has_the_upstream_closed_at_once(
        overrides, base_url, upstream, app):
    _reader, writer, _ = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": TOKENS, "words": [WORD]}},
    )
    try:
        assert await _stalled(upstream, quiet=1.0, limit=30.0), "the server's write never blocked"
        writer.close()  # with unread data: the server's blocked write fails
        assert await _until(lambda: app.services.inflight.outcomes["cancelled"] == 1, 10), "no outcome"
        # The answer's task closes the upstream stream itself on its way out, before the outcome is
        # recorded: left to the garbage collector, the stream would stay open (and billed) for as long
        # as something holds the cancelled task's frames. The 1 s is the promise to callers who leave.
        assert await upstream.wait_streams_closed(1.0), "the upstream stream is still open after the outcome"
        assert upstream.aborted_streams == 1
    finally:
        writer.close()
