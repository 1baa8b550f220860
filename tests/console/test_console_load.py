"""A console socket that never reads cannot slow the chat path or make the server hold more and more."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from app import build_services, make_app
from handlers.console import ConsoleSocketHandler
from services.console import MemoryHub, SubscriberPolicy
from tests.console.test_console import connect, console_cookie, read_frame, until

POLICY = SubscriberPolicy(max_frames=200, max_bytes=2 * 1024 * 1024, max_send_bytes=512 * 1024, stall_timeout=3.0)
BIG_PROMPT = "You are Nova, a guide on a live video call. " * 2300  # ~100 KB: Tavus-sized histories and more
REQUESTS = 200
CONCURRENCY = 20


@pytest.fixture
def overrides():
    return {"console_buffer": 20}


@pytest.fixture
def app(settings, io_loop):
    services = build_services(settings, hub=MemoryHub(settings.console_buffer, POLICY))
    application = make_app(settings, services)
    yield application
    io_loop.run_sync(application.services.close)


async def _chat_burst(base_url: str, label: str, requests: int = REQUESTS) -> list[float]:
    """Streamed chat requests, CONCURRENCY at a time; each one's time to first byte (s)."""
    client = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY)
    body = {
        "model": "m",
        "stream": True,
        # Several system messages (persona, rules, perception), so each request still puts about
        # 64 KB on the console's feed after it cuts every string to 16 KB.
        "messages": [{"role": "system", "content": BIG_PROMPT[i:i + 16_000]} for i in range(0, 80_000, 16_000)]
        + [{"role": "user", "content": "Where is it?"}],
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

    await asyncio.gather(*(limited(i) for i in range(requests)))
    client.close()
    return ttfts


def _server_socket(hub: MemoryHub) -> ConsoleSocketHandler:
    handlers = [
        o for o in gc.get_objects() if isinstance(o, ConsoleSocketHandler) and o.hub is hub and o.ws_connection
    ]
    assert len(handlers) == 1
    return handlers[0]


async def test_a_socket_that_never_reads_loses_events_is_dropped_and_chat_goes_on(http_server, base_url, app):
    hub = app.services.hub
    before = await _chat_burst(base_url, "before", REQUESTS // 2)

    stuck = await connect(base_url, await console_cookie(base_url))
    assert (await read_frame(stuck))["type"] == "hello"
    # From here on the client never reads: its receive window fills and the server's writes stall.
    [subscription] = hub.fanout.subscriptions
    server_side = _server_socket(hub)
    high_water = {"backlog": 0, "write_buffer": 0}

    async def watch() -> None:
        while True:
            high_water["backlog"] = max(high_water["backlog"], hub.backlog_bytes)
            stream = server_side.ws_connection and server_side.ws_connection.stream
            if stream is not None and stream._write_buffer is not None:
                high_water["write_buffer"] = max(high_water["write_buffer"], len(stream._write_buffer))
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    published_before = hub.published
    with_stuck = await _chat_burst(base_url, "stuck")
    published = hub.published - published_before

    # The stuck socket fell behind the shared backlog (and would be resynced) rather than
    # making the server hold more and more: about 20 MB of requests went by...
    assert published > 200 * 4
    assert subscription.fell_behind or subscription.closed
    assert high_water["backlog"] <= POLICY.max_bytes + len(BIG_PROMPT) + 64 * 1024, high_water
    # ...while the server held at most one handful of messages for it: what one socket is handed
    # at a time, or a snapshot of the 20 buffered requests (about 2 MB here).
    assert high_water["write_buffer"] <= 3 * 1024 * 1024, high_water
    # ...and once stalled past the timeout the socket is dropped.
    assert await until(lambda: hub.subscribers == 0, POLICY.stall_timeout + 10)
    watcher.cancel()
    stuck.close()

    # The chat path did not wait for the console. The behaviour is the time, in seconds: a chat
    # path held up by the stuck socket would take until it is dropped (stall_timeout, 3 s), while
    # the same load with no console, before and after, is tens of milliseconds. The bound is
    # half a second over twice that baseline, so a busy machine's noise cannot fail it.
    after = await _chat_burst(base_url, "after", REQUESTS // 2)
    baseline = max(statistics.median(before), statistics.median(after))
    assert statistics.median(with_stuck) <= 2 * baseline + 0.5, (before, with_stuck, after)
