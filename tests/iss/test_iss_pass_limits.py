"""Pass searches bounded (issue 19): the cache, the one small queue per process, the 503 and the tool's
error result past it, and the /iss* routes' rate limit and cross-site checks."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from services.common.bounded_work import BoundedWork, QueueFull
from services.iss.estimate import OrbitModel
from services.iss.queries import IssQueries
from services.iss.tools import IssTools
from services.iss.tracker import IssTracker
from services.ops.rate_limit import RateLimit
from tests.conftest import error_of
from tests.fakes.iss_sources import FakeIssSources, tracker_settings

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Where is the ISS?"}]}


class CountingTracker:
    """The real tracker, with every many-moments propagation of its orbit model counted."""

    def __init__(self, tracker: IssTracker) -> None:
        self.tracker = tracker
        self.propagations = 0

    def orbit(self) -> OrbitModel | None:
        orbit = self.tracker.orbit()
        if orbit is None:
            return None
        positions = orbit.positions

        def counted(unix: Any) -> Any:
            self.propagations += 1
            return positions(unix)

        return replace(orbit, positions=counted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


@contextlib.asynccontextmanager
async def _tracker(tmp_path):
    async with FakeIssSources() as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            await tracker.current()
            yield CountingTracker(tracker)
        finally:
            await tracker.close()


async def test_a_second_identical_search_runs_no_propagation(io_loop, tmp_path):
    async with _tracker(tmp_path) as tracker:
        queries = IssQueries(tracker)  # type: ignore[arg-type]
        try:
            paris = queries.observer("Paris")
            first = await queries.passes(paris, days=5, limit=20)
            ran = tracker.propagations
            assert ran > 0 and first["passes"]
            again = await queries.passes(paris, days=5, visible_only=True, limit=2)
            # A few hundred metres away: the same place once rounded to 0.1°.
            near = await queries.passes(queries.observer(None, paris.latitude + 0.01, paris.longitude - 0.01), days=5,
                                       limit=20)
            assert tracker.propagations == ran
            assert again["visible_count"] == first["visible_count"] > 0
            assert len(again["passes"]) == min(2, first["visible_count"]) and all(p["visible"] for p in again["passes"])
            assert [p["rise"] for p in near["passes"]] == [p["rise"] for p in first["passes"]]
            await queries.passes(paris, days=4)  # other parameters: a search of its own
            assert tracker.propagations > ran
            assert queries.searches.started == 2
        finally:
            await queries.close()


async def test_the_cache_is_bounded_least_recently_used_first_out(io_loop, tmp_path, monkeypatch):
    monkeypatch.setattr("services.iss.queries.CACHE_SIZE", 2)
    async with _tracker(tmp_path) as tracker:
        queries = IssQueries(tracker)  # type: ignore[arg-type]
        try:
            places = [queries.observer(name) for name in ("Paris", "Tokyo", "Nairobi")]
            for place in places[:2]:
                await queries.passes(place, days=1)
            await queries.passes(places[0], days=1)  # Paris used again: Tokyo is now the oldest
            await queries.passes(places[2], days=1)
            assert len(queries._passes_cache) == 2
            ran = tracker.propagations
            await queries.passes(places[0], days=1)
            assert tracker.propagations == ran  # kept
            await queries.passes(places[1], days=1)
            assert tracker.propagations > ran  # dropped, searched again
        finally:
            await queries.close()


async def test_the_queue_runs_at_most_its_bound_and_refuses_the_rest_at_once(io_loop):
    work = BoundedWork(running=1, waiting=2, name="test")
    release = threading.Event()
    ran: list[int] = []
    at_once = [0, 0]
    lock = threading.Lock()

    def job(number: int) -> int:
        with lock:
            at_once[0] += 1
            at_once[1] = max(at_once[1], at_once[0])
        release.wait(10)
        with lock:
            at_once[0] -= 1
            ran.append(number)
        return number

    tasks = [asyncio.ensure_future(work.run(lambda n=n: job(n))) for n in range(10)]
    await asyncio.sleep(0)
    refused = [t for t in tasks if t.done() and isinstance(t.exception(), QueueFull)]
    assert len(refused) == 7 and all(t.exception().retry_after >= 1 for t in refused)
    waiting = [t for t in tasks if not t.done()]
    assert len(waiting) == 3
    waiting[-1].cancel()  # its caller left while it waited: it never runs
    release.set()
    results = await asyncio.gather(*waiting[:2])
    assert sorted(results) == sorted(ran) and len(ran) == 2
    assert at_once[1] == 1 and work.peak == 3 and work.started == 2 and work.refused == 7
    work.close()


async def test_a_running_job_keeps_its_slot_when_its_caller_leaves(io_loop):
    work = BoundedWork(running=1, waiting=0, name="test")
    release, running = threading.Event(), threading.Event()
    leaving = asyncio.ensure_future(work.run(lambda: running.set() or release.wait(10)))
    assert await asyncio.to_thread(running.wait, 10)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert leaving.cancelled()
    with pytest.raises(QueueFull):
        await work.run(lambda: True)  # the thread still runs: no room yet
    release.set()
    for _ in range(1000):
        if work.admitted == 0:
            break
        await asyncio.sleep(0.005)
    assert await work.run(lambda: 42) == 42
    work.close()


async def test_the_pass_tool_past_the_queue_is_an_error_result_the_model_reads(io_loop, tmp_path):
    async with _tracker(tmp_path) as tracker:
        queries = IssQueries(tracker, searches=BoundedWork(running=1, waiting=0))  # type: ignore[arg-type]
        release, running = threading.Event(), threading.Event()
        busy = asyncio.ensure_future(queries.searches.run(lambda: running.set() or release.wait(10)))
        try:
            assert await asyncio.to_thread(running.wait, 10)
            result = await IssTools(queries).run("iss_passes", '{"place": "Tokyo"}')
            assert not result.ok
            assert "Too many pass searches" in orjson.loads(result.content)["error"]
            assert tracker.propagations == 0
            release.set()
            await busy
            result = await IssTools(queries).run("iss_passes", '{"place": "Tokyo"}')
            assert result.ok and "Tokyo" in result.content
        finally:
            release.set()
            await queries.close()


def _get_request(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


async def _status_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    raw = await asyncio.wait_for(reader.read(), 30)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("overrides", [{"pass_searches": 1, "pass_search_queue": 3, "iss_rate_per_min": 0}])
async def test_a_flood_of_pass_searches_is_shed_and_chat_still_answers(base_url, app, overrides):
    host, port = base_url.removeprefix("http://").split(":")
    queries: IssQueries = app.services.iss
    connections = []
    for number in range(200):  # 200 distinct places: no search helps another
        reader, writer = await asyncio.open_connection(host, int(port))
        lat, lon = -60 + (number % 100) * 1.2, -170 + (number // 100) * 50 + (number % 7) * 3
        writer.write(_get_request(f"/iss/passes?lat={lat:.1f}&lon={lon:.1f}&days=10"))
        connections.append((reader, writer))
    await asyncio.gather(*(writer.drain() for _, writer in connections))
    # Half the callers leave at once; the other half read their answer.
    for _, writer in connections[::2]:
        writer.close()
    started = time.monotonic()
    reader, writer, seen = await _open_chat(host, int(port))
    chat_first_event_s = time.monotonic() - started
    writer.close()
    answers = await asyncio.gather(*(_status_of(reader) for reader, _ in connections[1::2]))
    for _, w in connections[1::2]:
        w.close()
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    busy = [(headers, body) for status, headers, body in answers if status == 503]
    assert busy, statuses
    for headers, body in busy:
        assert int(headers["retry-after"]) >= 1
        error = orjson.loads(body)["error"]
        assert error["code"] == "pass_search_busy" and error["type"] == "server_error"
    # Never more searches in line than the bound; searches run only for callers the queue took.
    searches = queries.searches
    assert searches.peak <= 1 + 3
    assert searches.started + searches.refused <= 200 and searches.refused >= statuses.count(503)
    assert searches.started <= 200 - searches.refused
    assert b"data: " in seen and chat_first_event_s < 10


async def _open_chat(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    payload = orjson.dumps(CHAT)
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    seen = b""
    while b"data: " not in seen:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, seen
        seen += chunk
    return reader, writer, seen


async def _get(base_url: str, path: str, headers: dict[str, str] | None = None):
    return await AsyncHTTPClient().fetch(base_url + path, headers=headers, raise_error=False, request_timeout=20)


@pytest.mark.parametrize("overrides", [{"iss_rate_per_min": 60, "iss_rate_burst": 3, "trust_proxy_headers": True}])
async def test_iss_routes_are_rate_limited_per_address(base_url, overrides):
    paths = ["/iss", "/iss/crew", "/iss/passes?place=Paris&days=1"]
    for path in paths:
        assert (await _get(base_url, path)).code == 200, path
    limited = await _get(base_url, "/iss/crew")
    assert limited.code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    error = error_of(limited)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    # Another caller (behind the trusted proxy) has its own bucket.
    assert (await _get(base_url, "/iss/crew", {"X-Real-Ip": "203.0.113.7"})).code == 200
    # An IPv6 caller is one caller for its whole /64: new source addresses there share one bucket.
    codes = [(await _get(base_url, "/iss/crew", {"X-Real-Ip": f"2001:db8::{n:x}"})).code for n in range(1, 6)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes


def test_the_rate_limit_refills_and_its_table_is_bounded():
    limit = RateLimit(per_minute=60, burst=2, max_addresses=3)
    assert limit.take("a", now=0.0) is None and limit.take("a", now=0.0) is None
    assert limit.take("a", now=0.0) == 1  # one token a second
    assert limit.take("a", now=1.0) is None
    for address in ("b", "c", "d"):
        limit.take(address, now=1.0)
    assert len(limit) == 3  # "a", the least recently seen, made room
    assert RateLimit(per_minute=0, burst=1).take("a") is None  # off


async def test_iss_routes_refuse_foreign_pages_and_rebound_hosts(base_url):
    for path in ("/iss", "/iss/crew", "/iss/passes?place=Paris&days=1"):
        rebound = await _get(base_url, path, {"Host": "attacker.example"})
        assert rebound.code == 403 and error_of(rebound)["code"] == "host_not_allowed", path
        foreign = await _get(base_url, path, {"Origin": "https://evil.example"})
        assert foreign.code == 403 and error_of(foreign)["code"] == "cross_origin_refused", path
        image = await _get(base_url, path, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                                            "Sec-Fetch-Dest": "image"})
        assert image.code == 403 and error_of(image)["code"] == "cross_origin_refused", path
    # The console page (same origin), a link followed from elsewhere, and curl still get answers.
    page = {"Origin": base_url, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    assert (await _get(base_url, "/iss?track=45&step=60", page)).code == 200
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert (await _get(base_url, "/iss", link)).code == 200
    curl = await asyncio.to_thread(subprocess.run, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                                    base_url + "/iss/crew"], capture_output=True, text=True,
                                   timeout=20)
    assert curl.stdout == "200"


@pytest.mark.parametrize("overrides", [{"server_api_key": "sk-server-key-0123456789"}])
async def test_with_a_key_set_iss_routes_still_check_the_host(base_url, overrides):
    rebound = await _get(base_url, "/iss", {"Host": "attacker.example"})
    assert rebound.code == 403 and error_of(rebound)["code"] == "host_not_allowed"
    assert (await _get(base_url, "/iss")).code == 200


async def test_a_search_every_caller_left_while_it_waited_never_runs(io_loop, tmp_path):
    async with _tracker(tmp_path) as tracker:
        queries = IssQueries(tracker, searches=BoundedWork(running=1, waiting=4))  # type: ignore[arg-type]
        release, running = threading.Event(), threading.Event()
        busy = asyncio.ensure_future(queries.searches.run(lambda: running.set() or release.wait(10)))
        try:
            assert await asyncio.to_thread(running.wait, 10)
            paris = queries.observer("Paris")
            callers = [asyncio.ensure_future(queries.passes(paris, days=2)) for _ in range(3)]
            # The blocker, and one search for the three callers.
            assert await _until(lambda: queries.searches.admitted == 2)
            callers[0].cancel()
            await asyncio.gather(callers[0], return_exceptions=True)
            assert queries.searches.admitted == 2 and not callers[1].done()  # two callers still wait for it
            for caller in callers[1:]:
                caller.cancel()
            await asyncio.gather(*callers, return_exceptions=True)
            assert await _until(lambda: queries.searches.admitted == 1)  # given up: out of the line
            release.set()
            await busy
            assert queries.searches.started == 1 and tracker.propagations == 0
        finally:
            release.set()
            await queries.close()


async def _until(condition: Any, seconds: float = 5.0) -> bool:
    """Whether `condition()` became true within `seconds` (checked every millisecond)."""
    for _ in range(int(seconds * 1000)):
        if condition():
            return True
        await asyncio.sleep(0.001)
    return bool(condition())


async def test_a_request_sent_and_abandoned_at_once_costs_no_search_and_logs_499_as_info(
    app, base_url, http_server_port, caplog
):
    # A flood's pattern: the request written and the connection closed at once. The route sees the
    # caller gone before any work: no pass search starts, the access log says 499 at INFO.
    import logging
    import socket

    searches = app.services.iss.searches
    path = "/iss/passes?lat=48.9&lon=2.4&days=10"
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        with socket.create_connection(("127.0.0.1", http_server_port[1])) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert await _until(lambda: any(" /iss/passes " in r.getMessage() for r in caplog.records), 10)
        (line,) = [r for r in caplog.records if " /iss/passes " in r.getMessage()]
        assert line.getMessage().startswith("499 GET /iss/passes") and line.levelno == logging.INFO
        assert searches.started == 0
        # The same request from a caller that waits for it: answered, its search run.
        assert (await _get(base_url, path)).code == 200
        assert searches.started == 1
