"""Redis is data, not code, for the console too (issue 19, finding 6): a stream entry too long is
dropped before it is decoded, events of the wrong shape are left out, and a Redis at maxmemory
(refusing every write) gives neither a log storm nor a reconnect storm. Against a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
import redis.asyncio as redis

from services.console import SubscriberPolicy
from services.console.redis_hub import FIELD, MAX_ENTRY_BYTES, RedisHub
from services.console.replay import RECORD_BYTES, cut_marker
from services.iss.cluster_feed import RedisIssFeed
from tests.console.test_events import _request, _tokens

KEY = "test:console"


async def _hub(url: str, **kwargs) -> RedisHub:
    hub = RedisHub(url, 5, SubscriberPolicy(), key=KEY, **kwargs)
    await hub.start()
    assert await hub.settle(10)
    return hub


class Lines(logging.Handler):
    """Every line the project logs (INFO and up), kept."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_entry_too_long_is_dropped_undecoded_and_odd_events_are_left_out(redis_server):
    hub = await _hub(redis_server.url)
    store = redis.Redis.from_url(redis_server.url)
    lines = Lines()
    logging.getLogger("iss_llm").addHandler(lines)
    try:
        hub.publish(_request("r1"))
        assert await hub.settle()
        # Another writer of the stream: a 3 MB entry of valid events (what made every worker hold
        # and send a 30 MB console frame), twice; then events of the wrong shape beside a good one.
        huge = orjson.dumps([_tokens("r1", "x" * 1000)] * 3000)
        assert len(huge) > MAX_ENTRY_BYTES
        for _ in range(2):
            await store.xadd(KEY, {FIELD: huge})
        odd = [{"type": "tokens", "id": "r1", "text": "kept"}, {"type": "no-such-type", "id": "r1"},
               {"type": "tokens", "id": 7, "text": "x"}, {"type": "tokens", "id": "r" * 1000, "text": "x"},
               {"type": "cluster", "id": "-", "state": "connected"}, "not an event"]
        await store.xadd(KEY, {FIELD: orjson.dumps(odd)})
        await store.xadd(KEY, {FIELD: b"{not json"})
        hub.publish(_tokens("r1", " and this"))
        assert await hub.settle()
        assert hub.oversize == 2 and hub.unreadable >= 5
        [record] = hub.snapshot()
        assert record["text"] == "kept and this"
        # Logged once, not once per entry.
        assert sum("undecoded" in r.getMessage() for r in lines.records) == 1
        # A late worker loading the same stream drops the same entries.
        late = await _hub(redis_server.url)
        assert late.oversize == 2 and late.snapshot() == hub.snapshot()
        await late.close()
    finally:
        logging.getLogger("iss_llm").removeHandler(lines)
        await store.aclose()
        await hub.close()


async def test_this_workers_own_entries_are_cut_to_fit_and_a_token_run_is_one_event(redis_server):
    hub = await _hub(redis_server.url, max_entry_bytes=64 * 1024)
    store = redis.Redis.from_url(redis_server.url)
    try:
        hub.publish(_request("r1"))
        for _ in range(3000):
            hub.publish(_tokens("r1", "x" * 40))  # 120 KB of text in one batch window
        assert await hub.settle()
        entries = await store.xrange(KEY)
        assert all(len(fields[FIELD]) <= 64 * 1024 for _, fields in entries)
        events = [e for _, fields in entries for e in orjson.loads(fields[FIELD])]
        assert len([e for e in events if e["type"] == "tokens"]) < 10  # runs joined, not 3000 events
        assert hub.snapshot()[0]["text"] == "x" * RECORD_BYTES + cut_marker(40 * 3000 - RECORD_BYTES)
    finally:
        await store.aclose()
        await hub.close()


@pytest.mark.timeout(seconds=150)
async def test_redis_at_maxmemory_gives_neither_a_log_storm_nor_a_reconnect_storm(redis_server):
    store = redis.Redis.from_url(redis_server.url)
    hub = await _hub(redis_server.url)
    feed = RedisIssFeed(redis_server.url, "w1", tle_interval=7200.0, prefix="test:iss", lease_ttl=1.5)
    feed.attach(lambda fix: None, lambda elements: None)
    # Another worker holds the lease: this one tries to take it every second (a write).
    await store.set(feed.lease_key, b"other:1234", px=120_000)
    await feed.start()
    lines = Lines()
    project = logging.getLogger("iss_llm")
    level = project.level
    project.setLevel(logging.INFO)
    project.addHandler(lines)
    try:
        # Every write refused from now on (the default policy, noeviction, at a 1-byte limit); reads work.
        await store.config_set("maxmemory", 1)
        before = int((await store.info("stats"))["total_connections_received"])
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 10:
            hub.publish(_request(f"r{n}"))  # the console keeps writing; the lease keeps being renewed
            n += 1
            await asyncio.sleep(0.1)
        connections = int((await store.info("stats"))["total_connections_received"]) - before - 1
        said = [r.getMessage() for r in lines.records]
        # Before: the back-off reset at every connect, ~8 connections and ~7 lines a second.
        print(f"maxmemory for 10 s: {connections} connections, {len(said)} lines")
        assert connections <= 30, (connections, said)
        # One line each that the link was lost, one that it is back (the first time): not one per cycle.
        assert len(said) <= 4, said
        assert any("cluster feed lost" in line for line in said) and any("no cluster lease" in line for line in said)
        # Memory again: both links come back (within their back-off's cap).
        await store.config_set("maxmemory", 0)
        deadline = time.monotonic() + 70
        while not (hub.connected and feed.connected):
            assert time.monotonic() < deadline, "the links did not come back"
            await asyncio.sleep(0.1)
    finally:
        project.removeHandler(lines)
        project.setLevel(level)
        await store.config_set("maxmemory", 0)
        await store.aclose()
        await feed.close()
        await hub.close()
