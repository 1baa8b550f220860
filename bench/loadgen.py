"""The load generator: closed-loop streaming chat requests over aiohttp, timed per request."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

_DATA = b"data: "
_DONE = b"data: [DONE]"
_TAIL = len(_DATA) - 1  # bytes kept between blocks so a marker split across two is still seen
# A content token (a role chunk's "content":"" is not one), and the fake upstream's send stamp.
_CONTENT = re.compile(rb'"content":"[^"]')
_STAMPED = re.compile(rb'"content":"[^"].*?"x_sent":([0-9.]+)')


@dataclass
class Sample:
    """One streamed request as the caller saw it (seconds from sending the request).

    `ttft` is the first `data:` event, `ttfc` the first content token (what a voice replica waits
    for). With a stamped upstream, `pacing` holds |gap out - gap in| between consecutive content
    tokens: how much the path between upstream and caller changed the token rhythm.
    """

    ttft: float | None = None
    ttfc: float | None = None
    pacing: list[float] = field(default_factory=list)
    total: float = 0.0
    chunks: int = 0
    status: int = 0
    done: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None


@dataclass
class Batch:
    """The samples of one closed-loop run and its wall-clock time."""

    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def failed(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    @property
    def chunks(self) -> int:
        return sum(s.chunks for s in self.samples)


def chat_body(tokens: int, gap: float, first_token_delay: float, content: str = "Where is the ISS?",
              **fake: object) -> bytes:
    """A streamed chat request whose `x_fake` sets the fake upstream's pace for this request
    (`fake` adds more of its options: stamp, pause_at, pause)."""
    return orjson.dumps({
        "model": "bench-model",
        "stream": True,
        "messages": [{"role": "user", "content": content}],
        "x_fake": {"tokens": tokens, "gap": gap, "first_token_delay": first_token_delay, **fake},
    })


def make_session(concurrency: int, reuse: bool = True) -> aiohttp.ClientSession:
    """A client session that keeps one connection per worker (keep-alive, like a real caller), or
    (reuse=False) opens a new connection for every request."""
    if reuse:
        connector = aiohttp.TCPConnector(limit=concurrency + 8, limit_per_host=0, keepalive_timeout=30)
    else:
        connector = aiohttp.TCPConnector(limit=concurrency + 8, limit_per_host=0, force_close=True)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench-caller"},
    )


class _Pacing:
    """Reads a stamped stream's content events as they arrive: first content time and gap deviations."""

    def __init__(self, sample: Sample, started: float) -> None:
        self.sample = sample
        self.started = started
        self.buffer = b""
        self.last: tuple[float, float] | None = None  # (received, sent) of the previous token

    def feed(self, block: bytes, now: float) -> None:
        self.buffer += block
        events = self.buffer.split(b"\n\n")
        self.buffer = events.pop()
        for event in events:
            stamp = _STAMPED.search(event)
            if stamp is None:
                continue
            sent = float(stamp.group(1))
            if self.last is None:
                self.sample.ttfc = now - self.started
            else:
                self.sample.pacing.append(abs((now - self.last[0]) - (sent - self.last[1])))
            self.last = (now, sent)


async def stream_once(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    timeout: float,
    on_first: Callable[[], None] | None = None,
    stamped: bool = False,
) -> Sample:
    """POST one streamed request and read it to `[DONE]`; never raises, never exceeds `timeout`.

    Times are time.monotonic(), the clock the fake upstream stamps its chunks with (`stamped`).
    """
    sample = Sample()
    started = time.monotonic()
    pacing = _Pacing(sample, started) if stamped else None
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, data=body) as response:
                sample.status = response.status
                tail = b""
                async for block in response.content.iter_any():
                    now = time.monotonic()
                    window = tail + block
                    if pacing is not None:
                        pacing.feed(block, now)
                    elif sample.ttfc is None and _CONTENT.search(window):
                        sample.ttfc = now - started
                    count = window.count(_DATA)
                    if count:
                        if sample.ttft is None:
                            sample.ttft = now - started
                            if on_first is not None:
                                on_first()
                        if _DONE in window:
                            sample.done = True
                            count -= 1
                        sample.chunks += count
                    tail = window[-_TAIL:]
                if response.status != 200:
                    sample.error = f"http {response.status}"
                elif not sample.done:
                    sample.error = "truncated"
    except TimeoutError:
        sample.error = "timeout"
    except (aiohttp.ClientError, OSError) as exc:
        sample.error = type(exc).__name__
    sample.total = time.monotonic() - started
    return sample


async def run_batch(
    url: str,
    body: bytes,
    concurrency: int,
    requests: int,
    *,
    time_budget: float,
    request_timeout: float = 30.0,
    on_sample: Callable[[Sample], None] | None = None,
    reuse: bool = True,
    stamped: bool = False,
) -> Batch:
    """`concurrency` workers issue `requests` in total, back to back; none starts after `time_budget`.

    reuse: each worker keeps its connection from request to request (as agents do), else a new
    connection per request. stamped: the upstream stamps its chunks; measure token pacing.
    """
    batch = Batch()
    issued = 0
    started = time.perf_counter()
    deadline = started + time_budget

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            sample = await stream_once(session, url, body, request_timeout, stamped=stamped)
            batch.samples.append(sample)
            if on_sample is not None:
                on_sample(sample)

    async with make_session(concurrency, reuse) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    batch.wall = time.perf_counter() - started
    return batch


async def hold_open(
    url: str,
    body: bytes,
    streams: int,
    measure: Callable[[int], Awaitable[None]],
    *,
    open_timeout: float = 30.0,
) -> int:
    """Open `streams` long streams at once, call `measure(open_count)` once all are open, abandon them.

    The body must ask for streams that outlast `open_timeout`. Returns how many were open when measured.
    """
    opened = 0
    all_open = asyncio.Event()

    def first() -> None:
        nonlocal opened
        opened += 1
        if opened >= streams:
            all_open.set()

    async with make_session(streams) as session:
        tasks = [
            asyncio.create_task(stream_once(session, url, body, open_timeout + 30, on_first=first))
            for _ in range(streams)
        ]
        try:
            try:
                await asyncio.wait_for(all_open.wait(), open_timeout)
            except TimeoutError:
                pass
            await measure(opened)
        finally:
            # Abandon every stream, the way a speculative caller does.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return opened
