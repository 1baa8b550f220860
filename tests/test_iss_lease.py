"""The cluster's one ISS poller, against a real redis-server: elected by a lease, its fixes reach the
others, the lease moves on when its holder goes, and without Redis every worker polls on its own."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from config import BUNDLED_TLE
from services.iss.cluster_feed import RedisIssFeed
from services.iss.sources import Fix
from services.iss.tle import load_tle_file
from tests.redis_server import free_port


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _feed(url: str, name: str, received: dict[str, list]) -> RedisIssFeed:
    feed = RedisIssFeed(url, name, tle_interval=7200.0, prefix="test:iss", lease_ttl=1.5)
    received[name] = []
    feed.attach(received[name].append, received[name].append)
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

    now = datetime.now(UTC)
    fix = Fix("open-notify", 12.5, -45.25, now, now, altitude_km=420.0)
    holder.fetched_fix(fix)
    await _until(lambda: all(received[f.worker] for f in others), 5, "the fix did not reach the others")
    assert all(received[f.worker] == [fix] for f in others)
    assert received[holder.worker] == []

    # CelesTrak: only the holder may ask, once; its elements reach the others, and no one asks
    # again while the cluster's record of the fetch stands.
    assert not any(f.may_fetch_elements() for f in others)
    assert holder.may_fetch_elements()
    elements = load_tle_file(BUNDLED_TLE, "celestrak")
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
