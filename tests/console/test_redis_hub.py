"""The Redis hub's own promises, against a real redis-server: a shared history, a bounded stream,
and a chat path that never waits when Redis is slow or gone."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import orjson
import redis.asyncio as redis

from services.console import SubscriberPolicy
from services.console.redis_hub import RedisHub
from tests.console.test_events import _events, _request, _tokens


async def _hub(url: str, buffer_size: int = 5, **kwargs) -> RedisHub:
    hub = RedisHub(url, buffer_size, SubscriberPolicy(), key="test:console", **kwargs)
    await hub.start()
    assert await hub.settle(10)
    return hub


def _feed_states(events: list[dict]) -> list[str]:
    return [e["state"] for e in events if e["type"] == "cluster"]


async def test_every_worker_replays_the_same_history_and_the_stream_keeps_only_the_buffer(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    # Approximate trimming drops whole nodes of the stream (100 entries each by default, more than
    # this test writes): with nodes of 4, what is kept beyond the buffer is at most one node.
    await client.config_set("stream-node-max-entries", 4)
    one = await _hub(redis_server.url)
    two = await _hub(redis_server.url)
    for i in range(40):
        hub = one if i % 2 else two
        hub.publish(_request(f"r{i}"))
        hub.publish(_tokens(f"r{i}", f"text {i}"))
        assert await hub.settle()  # in the stream before the other worker publishes the next one
    assert await one.settle()
    assert await two.settle()
    assert [r["id"] for r in one.snapshot()] == [f"r{i}" for i in range(35, 40)]
    assert one.snapshot() == two.snapshot()
    assert {r["worker"] for r in one.snapshot()} == {one.worker}  # one process here: the same name
    # A worker started later replays the same five requests, from the stream alone.
    late = await _hub(redis_server.url)
    assert late.snapshot() == one.snapshot()
    # One entry per settle() above, so 40 written; the stream was trimmed to the five requests the
    # buffer holds (an entry each), plus at most one partly kept node of 4.
    assert await client.xlen("test:console") <= 5 + 4
    await client.aclose()
    for hub in (one, two, late):
        await hub.close()


async def test_an_idle_feed_stays_connected(redis_server):
    hub = await _hub(redis_server.url)
    sub = hub.subscribe()
    _all(sub)
    await asyncio.sleep(3.5)  # longer than a blocking read (1 s) plus the command timeout, twice
    assert hub.connected
    hub.flush()
    assert _feed_states(_all(sub)) == []
    await hub.close()


def _all(sub) -> list[dict]:
    """Every event a subscription is handed now, the hub's cluster pushes included."""
    return [e for m in sub.drain() for e in orjson.loads(m).get("events", [])]


async def test_without_redis_the_hub_shows_this_workers_requests(tmp_path):
    from tests.redis_server import free_port

    hub = RedisHub(f"redis://127.0.0.1:{free_port()}/0", 5, key="test:console")
    await hub.start()
    sub = hub.subscribe()
    hub.publish(_request("r1"))
    for i in range(1000):
        hub.publish(_tokens("r1", f"{i} "))
    assert not await hub.settle(1.0)
    assert hub.status()["feed"] == "cluster-down"
    assert hub.snapshot()[0]["text"] == "".join(f"{i} " for i in range(1000))
    assert "".join(e["text"] for e in _events(sub) if e["type"] == "tokens") == hub.snapshot()[0]["text"]
    await hub.close()


async def test_a_frozen_redis_costs_the_publisher_nothing_and_the_feed_comes_back(redis_server):
    hub = await _hub(redis_server.url, max_outbox=100)
    sub = hub.subscribe()
    _all(sub)
    os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis stops answering, connections stay open
    try:
        hub.publish(_request("r1"))
        for _ in range(1000):
            hub.publish(_tokens("r1", "x"))
        hub.drain()  # what the loop does once the publisher yields
        # The outbox is bounded: the rest was dropped and counted, not queued without end.
        assert hub.dropped == 1001 - 100
        # The write times out: the hub degrades, and what it held is shown on this worker.
        deadline = time.monotonic() + 10
        while hub.connected:
            assert time.monotonic() < deadline, "a frozen Redis was not noticed"
            await asyncio.sleep(0.05)
        hub.publish(_tokens("r1", "local"))
        hub.flush()
        seen = _all(sub)
        assert "disconnected" in _feed_states(seen)
        assert hub.snapshot()[0]["text"].endswith("local")
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert await hub.settle(15)
    hub.publish(_tokens("r1", "cluster"))
    assert await hub.settle()
    seen = _all(sub)
    assert "connected" in _feed_states(seen)
    await hub.close()


async def test_close_ends_even_when_the_write_loop_loses_its_cancel(redis_server, monkeypatch):
    # Python 3.11's asyncio.wait_for loses a cancel that comes as the awaited command finishes: the
    # write loop then went back to waiting for events, close() waited for it forever and the worker
    # never exited (CI, a draining lease holder). Here a flush loses the cancel the same way; close()
    # still ends the feed, because closing wakes the write loop and the loop checks for it.
    hub = await _hub(redis_server.url)
    real_flush, flushing = hub._flush_outbox, asyncio.Event()

    async def flush_that_loses_a_cancel() -> None:
        await real_flush()
        if flushing.is_set():  # close()'s own flush
            return
        flushing.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass  # as wait_for did when the command's reply came with the cancel

    monkeypatch.setattr(hub, "_flush_outbox", flush_that_loses_a_cancel)
    hub.publish(_request("r1"))
    hub.drain()
    await asyncio.wait_for(flushing.wait(), 10)  # the write loop is inside its flush
    closing = asyncio.ensure_future(hub.close())
    await asyncio.wait({closing}, timeout=8)  # not wait_for: its cancel would end close() by force
    if not closing.done():
        closing.cancel()
        raise AssertionError("close() did not end: the write loop went back to waiting for events")
    assert hub._task is not None and hub._task.done()
