"""The cluster's one ISS poller, against a real redis-server: elected by a lease, its fixes reach the
others, the lease moves on when its holder goes, and without Redis every worker polls on its own."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from config import BUNDLED_TLE
from services.iss.cluster_feed import RedisIssFeed
from services.iss.orbit import propagate
from services.iss.sources import Fix
from services.iss.tle import parse_tle
from tests.fakes.iss_sources import retimed_tle
from tests.redis_server import free_port

# The bundled elements with a recent epoch: what CelesTrak would send, and what fixes are checked against.
ELEMENTS = parse_tle(retimed_tle(BUNDLED_TLE.read_text(encoding="ascii"), datetime.now(UTC)), "celestrak")


def on_track_fix(source: str = "open-notify") -> Fix:
    """A fix where the station is now, by the elements in use."""
    now = datetime.now(UTC).replace(microsecond=0)
    point = propagate(ELEMENTS.satrec, now)
    return Fix(source, round(point.latitude, 4), round(point.longitude, 4), now, now, altitude_km=420.0)


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _feed(url: str, name: str, received: dict[str, list]) -> RedisIssFeed:
    feed = RedisIssFeed(url, name, tle_interval=7200.0, prefix="test:iss", lease_ttl=1.5)
    received[name] = []
    feed.attach(received[name].append, received[name].append, lambda: ELEMENTS)
    return feed


async def test_one_holder_its_fixes_reach_the_others_and_the_lease_moves_when_it_goes(redis_server):
    received: dict[str, list] = {}
    feeds = [_feed(redis_server.url, f"w{i}", received) for i in range(3)]
    for feed in feeds:
        await feed.start()
    await _until(lambda: sum(f.holder for f in feeds) == 1 and all(f.connected for f in feeds), 10, "one holder")
    holder = next(f for f in feeds if f.holder)
    others = [f for f in feeds if f is not holder]
    assert holder.may_poll() and not any(f.may_poll() for f in others)

    fix = on_track_fix()
    holder.fetched_fix(fix)
    await _until(lambda: all(received[f.worker] for f in others), 5, "the fix did not reach the others")
    assert all(received[f.worker] == [fix] for f in others)
    assert received[holder.worker] == []

    # CelesTrak: only the holder may ask, once; its elements reach the others, and no one asks
    # again while the cluster's record of the fetch stands.
    assert not any(f.may_fetch_elements() for f in others)
    assert holder.may_fetch_elements()
    elements = ELEMENTS
    holder.fetched_elements(elements)
    await _until(lambda: all(len(received[f.worker]) == 2 for f in others), 5, "elements")
    assert received[others[0].worker][1].line1 == elements.line1
    assert not holder.may_fetch_elements()

    # The holder goes (its process dies: no release); another takes the lease within seconds.
    holder._task.cancel()
    holder.holder = False
    started = time.monotonic()
    await _until(lambda: sum(f.holder for f in others) == 1, 10, "the lease did not move on")
    assert time.monotonic() - started < 6
    # A worker that joins later gets the cluster's element set at once.
    late = _feed(redis_server.url, "late", received)
    await late.start()
    await _until(lambda: received["late"], 5, "a late worker did not get the elements")
    assert received["late"][0].line1 == elements.line1
    # The new holder too does not ask CelesTrak again: the fetch was recorded for the cluster.
    new_holder = next(f for f in others if f.holder)
    assert not new_holder.may_fetch_elements()
    for feed in [*others, late]:
        await feed.close()


async def test_without_redis_every_worker_polls_on_its_own():
    received: dict[str, list] = {}
    feed = _feed(f"redis://127.0.0.1:{free_port()}/0", "alone", received)
    await feed.start()
    await _until(lambda: feed._warned, 5, "no failed attempt")
    assert not feed.connected and feed.may_poll() and feed.may_fetch_elements()
    await feed.close()


async def test_a_resigning_holder_gives_the_lease_up_at_once_and_never_takes_it_again(redis_server):
    import redis.asyncio as redis

    received: dict[str, list] = {}
    # A lease that would outlive the test: only a release can hand it on within its bounds.
    feeds = [RedisIssFeed(redis_server.url, f"w{i}", tle_interval=7200.0, prefix="test:iss", lease_ttl=60.0)
             for i in range(3)]
    for feed in feeds:
        received[feed.worker] = []
        feed.attach(received[feed.worker].append, received[feed.worker].append, lambda: ELEMENTS)
        await feed.start()
    store = redis.Redis.from_url(redis_server.url)
    try:
        await _until(lambda: sum(f.holder for f in feeds) == 1 and all(f.connected for f in feeds), 10, "one holder")
        holder = next(f for f in feeds if f.holder)
        others = [f for f in feeds if f is not holder]
        assert (await store.get(holder.lease_key)).decode() == holder._me

        await holder.resign()  # what a worker does when its drain begins
        assert not holder.holder and not holder.may_poll() and not holder.may_fetch_elements()
        await _until(lambda: sum(f.holder for f in others) == 1, 10, "no other worker took the lease")
        new_holder = next(f for f in others if f.holder)
        # The resigned worker stays connected but never takes the lease again, even when it is
        # free: the others resign in turn, and the lease stays with no one.
        await new_holder.resign()
        last = next(f for f in others if f is not new_holder)
        await _until(lambda: last.holder, 10, "the last worker did not take the lease")
        fix = on_track_fix()
        last.fetched_fix(fix)
        await _until(lambda: received[holder.worker] == [fix], 5, "a resigned worker no longer hears the fixes")
        await last.resign()
        for _ in range(3):  # three renewal periods in which a free lease could have been taken
            await asyncio.sleep(holder.renew_every)
            assert await store.get(holder.lease_key) is None
            assert not any(f.holder for f in feeds) and holder.connected
    finally:
        await store.aclose()
        for feed in feeds:
            await feed.close()
    assert all(not f.holder for f in feeds)


async def _holding(url: str, **kwargs) -> RedisIssFeed:
    feed = RedisIssFeed(url, "w0", tle_interval=7200.0, prefix="test:iss", **kwargs)
    feed.attach(lambda fix: None, lambda elements: None)
    await feed.start()
    await _until(lambda: feed.connected and feed.holder, 10, "w0 holds the lease")
    assert feed.may_poll()
    return feed


async def test_a_holder_whose_lease_was_taken_stops_polling_within_a_renewal_period(redis_server):
    import redis.asyncio as redis

    # A lease that lives well past the renewal period: what stops the holder is the failed
    # renewal, not the lease running out.
    feed = await _holding(redis_server.url, lease_ttl=6.0)
    assert feed.renew_every == 1.0
    client = redis.Redis.from_url(redis_server.url)
    try:
        # Its lease expired unseen (a pause longer than the TTL) and another worker took it.
        await client.set(feed.lease_key, b"w9:other", px=10_000)
        await _until(lambda: not feed.may_poll(), feed.renew_every + feed.timeout,
                     "the holder still polls a renewal period after its lease was taken")
        assert not feed.holder and feed.connected
        assert not feed.may_fetch_elements()
        assert await client.get(feed.lease_key) == b"w9:other"  # never taken back from its holder
    finally:
        await client.aclose()
        await feed.close()


async def test_a_holder_that_cannot_renew_stops_polling_when_its_lease_runs_out(redis_server):
    import os
    import signal

    # Redis stops answering (frozen, not closed): the renewal hangs for the command timeout, longer
    # than the lease lives. Past the lease's end another worker may hold it: this one stops polling
    # then, without waiting for the timeout to tell it the link is gone.
    feed = await _holding(redis_server.url, timeout=8.0, lease_ttl=1.5)
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        await _until(lambda: not feed.may_poll(), feed.lease_ttl + feed.renew_every,
                     "the holder still polls past its lease's end with no renewal answered")
        assert time.monotonic() - frozen <= feed.lease_ttl + feed.renew_every
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
        await feed.close()
