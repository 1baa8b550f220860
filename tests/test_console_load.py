"""A console socket that never reads cannot slow the chat path or make the server hold more and more."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from handlers.console import ConsoleSocketHandler
from server import build_services, make_app
from services.events import EventHub, SubscriberPolicy
from tests.test_console import connect, console_cookie, read_frame, until

POLICY = SubscriberPolicy(max_events=500, max_bytes=1024 * 1024, batch_interval=0.05, stall_timeout=3.0)
BIG_PROMPT = "You are Nova, a guide on a live video call. " * 2300  # ~100 KB: Tavus-sized histories and more
REQUESTS = 200
CONCURRENCY = 20


@pytest.fixture
def overrides():
    return {"console_buffer": 20}


@pytest.fixture
def app(settings, io_loop):
    services = build_services(settings, hub=EventHub(settings.console_buffer, POLICY))
    application = make_app(settings, services)
    yield application
    io_loop.run_sync(application.services.close)


async def _chat_burst(base_url: str, label: str) -> list[float]:
    """REQUESTS streamed chat requests, CONCURRENCY at a time; each one's time to first byte (s)."""
    client = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY)
    body = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "system", "content": BIG_PROMPT}, {"role": "user", "content": "Where is it?"}],
        "x_fake": {"tokens": 20, "gap": 0.001},
    }
    payload = orjson.dumps(body)
    ttfts: list[float] = []

    async def one(i: int) -> None:
        started = time.perf_counter()
        first: list[float] = []

        def on_chunk(chunk: bytes) -> None:
            if not first:
                first.append(time.perf_counter() - started)

        response = await client.fetch(HTTPRequest(
            base_url + "/v1/chat/completions", method="POST", body=payload,
            headers={"Content-Type": "application/json", "conversation-id": f"{label}-{i % 7}"},
            streaming_callback=on_chunk, request_timeout=30,
        ), raise_error=False)
        assert response.code == 200, response.code
        ttfts.append(first[0])

    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def limited(i: int) -> None:
        async with semaphore:
            await one(i)

    await asyncio.gather(*(limited(i) for i in range(REQUESTS)))
    client.close()
    return ttfts


def _server_socket(hub: EventHub) -> ConsoleSocketHandler:
    handlers = [
        o for o in gc.get_objects() if isinstance(o, ConsoleSocketHandler) and o.hub is hub and o.ws_connection
    ]
    assert len(handlers) == 1
    return handlers[0]


async def test_a_socket_that_never_reads_loses_events_is_dropped_and_chat_goes_on(http_server, base_url, app):
    hub = app.services.hub
    baseline = await _chat_burst(base_url, "baseline")

    stuck = await connect(base_url, await console_cookie(base_url))
    assert (await read_frame(stuck))["type"] == "hello"
    # From here on the client never reads: its receive window fills and the server's writes stall.
    [subscription] = hub._subscribers
    server_side = _server_socket(hub)
    high_water = {"queued": 0, "queued_bytes": 0, "write_buffer": 0}

    async def watch() -> None:
        while True:
            high_water["queued"] = max(high_water["queued"], subscription.queued)
            high_water["queued_bytes"] = max(high_water["queued_bytes"], subscription.queued_bytes)
            stream = server_side.ws_connection and server_side.ws_connection.stream
            if stream is not None and stream._write_buffer is not None:
                high_water["write_buffer"] = max(high_water["write_buffer"], len(stream._write_buffer))
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    published_before = hub.published
    with_stuck = await _chat_burst(base_url, "stuck")
    published = hub.published - published_before

    # The chat path did not wait for the console.
    base_median, stuck_median = statistics.median(baseline), statistics.median(with_stuck)
    assert stuck_median <= 2 * base_median + 0.02, (base_median, stuck_median)

    # The stuck socket lost events (queue thrown away for a resync) rather than piling them up...
    assert published > POLICY.max_events
    assert subscription.dropped > 0
    assert high_water["queued"] <= POLICY.max_events + 1
    assert high_water["queued_bytes"] <= POLICY.max_bytes + len(BIG_PROMPT) + 4096
    # ...the server held at most one frame for it (a snapshot of 20 requests is about 2 MB here),
    # while about 20 MB of requests went by...
    assert high_water["write_buffer"] <= 4 * 1024 * 1024, high_water
    # ...and once stalled past the timeout the socket is dropped.
    assert await until(lambda: hub.subscribers == 0, POLICY.stall_timeout + 10)
    watcher.cancel()
    stuck.close()
