"""Workers joined through a real Redis: one console for all of them, and what happens when Redis goes away."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.conftest import open_stream
from tests.ops.test_workers import _workers_env, serving, wait_until
from tests.server.test_server_process import MESSAGES, ServerProcess, _env, _free_port
from tests.support import Steps

TOKEN = "process-console-token"
# Each test's steps share this much time, below the 60 s per-test limit (pytest.ini), so the step
# that runs out is named.
BUDGET_S = 55.0



class Console:
    """A console socket read in the background: every frame kept, events by request."""

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (message := await self.ws.read_message()) is not None:
            self.frames.append(orjson.loads(message))

    @property
    def hello(self) -> dict[str, Any]:
        return self.frames[0]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        return [e for f in self.frames[since:] if f["type"] == "events" for e in f["events"]]

    def requests(self, since: int = 0) -> dict[str, dict[str, Any]]:
        """Request events seen live (after frame `since`), by id."""
        return {e["id"]: e for e in self.events(since) if e["type"] == "request"}

    def workers(self, since: int = 0) -> set[str]:
        return {e.get("worker") for e in self.requests(since).values()}

    def close(self) -> None:
        self.ws.close()
        self._reader.cancel()


async def stopped(server: ServerProcess) -> int:
    """SIGTERM and the exit code; a server that does not stop fails with what it printed last."""
    try:
        return await server.stop()
    except TimeoutError:
        raise AssertionError("the server did not stop:\n" + "".join(server.output[-40:])) from None


async def open_console(base: str) -> Console:
    client = AsyncHTTPClient(force_instance=True)
    response = await client.fetch(f"{base}/console?token={TOKEN}", follow_redirects=False, raise_error=False)
    client.close()
    assert response.code == 303
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    ws = await websocket_connect(HTTPRequest(base.replace("http://", "ws://") + "/console/ws",
                                             headers={"Cookie": cookie}, request_timeout=5))
    console = Console(ws)
    await wait_until(lambda: bool(console.frames), 5, "no hello")
    assert console.hello["type"] == "hello"
    return console


async def chat(base: str, label: str, gap: float = 0.005) -> str:
    """One streamed chat request on a new connection; its answer's text (it must end with [DONE])."""
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(HTTPRequest(
            base + "/v1/chat/completions", method="POST",
            body=orjson.dumps({"model": "m", "stream": True, "messages": MESSAGES,
                               "x_fake": {"tokens": 8, "gap": gap}}),
            headers={"Content-Type": "application/json", "conversation-id": label, "Connection": "close"},
            request_timeout=15,
        ), raise_error=False)
    finally:
        client.close()
    assert response.code == 200, response.code
    body = response.body.decode()
    assert body.rstrip().endswith("data: [DONE]"), body[-200:]
    return "".join(
        (orjson.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in body.splitlines() if line.startswith("data: {")
    )


async def chat_until(base: str, console: Console, predicate, what: str, since: int = 0, limit: int = 60) -> None:
    """Chat requests, four at a time on new connections, until the console shows what is wanted.

    Four at once, each streaming for about half a second: workers sharing one listening socket hand
    an idle server's connections mostly to one of them; with that one busy, the others go to the
    other. After each round, the console gets a second for their events (they take milliseconds,
    through Redis too): a round served where the console cannot see it costs that second, not more.
    """
    for n in range(0, limit, 4):
        await asyncio.gather(*(chat(base, f"{what}-{n + k}", gap=0.06) for k in range(4)))
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not seen after {limit} requests; workers seen {console.workers(since)}")


async def test_one_console_sees_every_worker_and_survives_redis_going_away(
    io_loop, paced_upstream, tmp_path, redis_server
):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        _workers_env(tmp_path, paced_upstream, REDIS_URL=redis_server.url),
        "--port", str(port), "--workers", "2",
    )
    steps = Steps(BUDGET_S, lambda: "".join(server.output))
    console = None
    try:
        async with steps.step("two workers serving", 25):
            await server.start()
            await wait_until(lambda: len(serving(server)) == 2, 60, "two workers serving")
        assert not [line for line in server.output if "without REDIS_URL" in line]  # with Redis: no warning
        pids = serving(server)
        async with steps.step("a console on the cluster feed", 10):
            console = await open_console(base)
            await wait_until(
                lambda: any(e["type"] == "cluster" and e["state"] == "connected" for e in console.events())
                or console.hello.get("feed") == "cluster", 10, "the console's worker never joined the feed")
        mine = console.hello["worker"]

        # One console, requests served by both workers, each request's events in order.
        async with steps.step("requests from both workers on one console", 20):
            await chat_until(base, console, lambda: len(console.workers()) == 2, "both")
            assert {int(w.rsplit(":", 1)[1]) for w in console.workers()} == pids
            await wait_until(
                lambda: set(console.requests()) <= {e["id"] for e in console.events() if e["type"] == "done"},
                10, "each request's outcome")
        events = console.events()
        for rid in console.requests():
            kinds = [e["type"] for e in events if e["id"] == rid]
            assert kinds[0] == "request" and kinds[-1] == "done" and kinds.count("done") == 1, kinds
        # A second console, on whichever worker, replays the same history.
        async with steps.step("a second console replays the history", 10):
            other = await open_console(base)
            assert {r["id"] for r in other.hello["requests"]} >= set(console.requests())
            other.close()

        # Redis goes away: chat goes on, the console says it lost the cluster feed and shows its
        # own worker's requests meanwhile.
        async with steps.step("chat without Redis, the console told", 15):
            redis_server.stop()
            for n in range(4):
                assert await chat(base, f"no-redis-{n}")
            await wait_until(
                lambda: any(e["type"] == "cluster" and e["state"] == "disconnected" for e in console.events()), 15,
                "the console was not told the cluster feed was lost",
            )
        lost_at = len(console.frames)
        async with steps.step("the console shows its own worker's requests", 15):
            await chat_until(base, console, lambda: mine in console.workers(lost_at), "own-worker", since=lost_at)

        # Redis is back: the console is told, rebuilt from the cluster's stream, and sees both workers again.
        async with steps.step("the cluster feed back after Redis restarts", 15):
            redis_server.start()
            await wait_until(
                lambda: any(e["type"] == "cluster" and e["state"] == "connected" for e in console.events(lost_at)),
                20, "the cluster feed did not come back",
            )
        back_at = len(console.frames)
        assert any(f["type"] == "snapshot" and f["reason"] == "cluster" for f in console.frames[lost_at:])
        async with steps.step("both workers again on the console", 10):
            await chat_until(base, console, lambda: len(console.workers(back_at)) == 2, "both-again", since=back_at)
        async with steps.step("the server stops", 15):
            assert await stopped(server) == 0
        text = "".join(server.output)
        assert re.search(r"cluster feed lost \(Redis at 127\.0\.0\.1:\d+/0: ", text)
        assert "cluster feed back" in text
        server.assert_clean_output()
    finally:
        if console is not None:
            console.close()
        server.kill()


async def _poll_count(fakes, window: float) -> tuple[int, float]:
    """Open Notify's polls over `window` seconds (the time is what is measured)."""
    before, started = fakes.requests["open-notify"], time.monotonic()
    await asyncio.sleep(window)
    return fakes.requests["open-notify"] - before, time.monotonic() - started


async def test_a_cluster_of_three_polls_open_notify_once_per_interval_and_the_lease_moves_on(
    io_loop, tmp_path, redis_server
):
    import psutil

    from tests.fakes.iss_sources import FakeIssSources

    fakes = FakeIssSources()
    await fakes.start()
    port = _free_port()
    # Open Notify asks for no more than one poll per 5 s (the source keeps to it): a poller's polls
    # come a little more than an interval apart.
    interval = 5.0
    server = ServerProcess(
        _env(tmp_path, REDIS_URL=redis_server.url, ISS_SOURCES="open-notify", ISS_API_URL=fakes.url("open-notify"),
             ISS_REFRESH_INTERVAL=str(interval)),
        "--port", str(port), "--workers", "3",
    )
    steps = Steps(BUDGET_S, lambda: "".join(server.output))
    try:
        async with steps.step("three workers serving, one holding the lease", 25):
            await server.start()
            await wait_until(lambda: len(serving(server)) == 3, 60, "three workers serving")
            holder_line = await server.wait_for_line("polls the ISS sources for the cluster")
        holder = int(re.search(r"\[(\d+)\]", holder_line).group(1))
        async with steps.step("one poll per interval for the cluster", 15):
            # Over two and a half intervals one poller makes 2 or 3 (one more if a worker polled once
            # as it started, before it saw the lease); three workers on their own would make 6 or more.
            polls, window = await _poll_count(fakes, 2.5 * interval)
            assert 2 <= polls <= 4, (polls, window)

        # The holder dies: another worker takes the lease within seconds, and the polls go on at
        # the same pace.
        first = serving(server)
        lines = len(server.output)  # before the kill: the new holder may speak before the parent reaps
        async with steps.step("the lease moves on when its holder dies", 15):
            psutil.Process(holder).kill()
            await server.wait_for_line(f"(pid {holder}) died", 15)
            await wait_until(
                lambda: any("polls the ISS sources for the cluster" in line for line in server.output[lines:]),
                15, "the lease did not move on")
        # Its replacement polls on its own once if Redis is slow to answer as it starts: count after it serves.
        async with steps.step("a replacement worker serving", 20):
            await wait_until(lambda: len(serving(server) - first) == 1, 60, "no replacement worker serving")
        async with steps.step("one poll per interval after the move", 15):
            polls, window = await _poll_count(fakes, 1.5 * interval)  # one poller: 1 or 2 (on their own: 3+)
            assert 1 <= polls <= 2, (polls, window)
        async with steps.step("the server stops", 15):
            assert await stopped(server) == 0
        server.assert_clean_output()
    finally:
        server.kill()
        await fakes.close()


async def test_a_draining_lease_holder_gives_the_lease_up_at_once_and_never_takes_it_back(
    io_loop, paced_upstream, tmp_path, redis_server
):
    import psutil
    import redis.asyncio as redis

    from tests.support import connection_owner

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        _workers_env(tmp_path, paced_upstream, REDIS_URL=redis_server.url, DRAIN_TIMEOUT="120"),
        "--port", str(port), "--workers", "3",
    )
    store = redis.Redis.from_url(redis_server.url)
    streams: list[asyncio.StreamWriter] = []

    async def lease_pid() -> int | None:
        """The pid in the lease's value ("host:pid:nonce"), read from Redis itself."""
        value = await store.get("iss_llm:iss:lease")
        return int(value.decode().split(":")[-2]) if value else None

    async def lease_pid_when(wanted) -> int | None:
        """The lease's pid once `wanted(pid)` holds, polled every 50 ms (the step bounds the wait)."""
        for _ in range(100_000):
            pid = await lease_pid()
            if wanted(pid):
                return pid
            await asyncio.sleep(0.05)
        raise AssertionError("unreachable: the step's deadline comes first")

    steps = Steps(BUDGET_S, lambda: "".join(server.output))
    try:
        async with steps.step("three workers serving, one holding the lease", 25):
            await server.start()
            await wait_until(lambda: len(serving(server)) == 3, 60, "three workers serving")
            workers = serving(server)
            holder = await lease_pid_when(lambda pid: pid in workers)
        # A stream the holder is serving, so its drain lasts until this test ends it.
        slow = {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 5000, "gap": 0.02}}
        held = None
        async with steps.step("a stream on the lease holder", 10):
            for _ in range(60):
                reader, writer, _ = await open_stream(base, slow)
                streams.append(writer)
                if connection_owner(writer, workers) == holder:
                    held = reader
                    break
            assert held is not None, "no stream landed on the lease holder"

        async with steps.step("the draining holder gives the lease up", 10):
            # The lease may have moved since it was read (a holder that missed renewals on a busy
            # machine): the one to drain is the holder now.
            assert await lease_pid() == holder, "the lease moved before the holder was signalled"
            psutil.Process(holder).terminate()  # SIGTERM: this worker drains
            await server.wait_for_line("gave up the polling lease", timeout=10)
        # Another live worker takes the lease within seconds (while the old holder drains: a worker
        # that went on renewing it would keep it for the whole drain)...
        async with steps.step("another worker takes the lease", 10):
            now = await lease_pid_when(lambda pid: pid not in (None, holder))
        assert now in workers - {holder}
        # ...and the draining worker, still serving its stream, never holds it again.
        async with steps.step("the draining worker never takes the lease back", 10):
            assert psutil.pid_exists(holder) and await asyncio.wait_for(held.read(65536), 10)
            for _ in range(60):  # 3 s: three renewal periods
                assert await lease_pid() != holder
                await asyncio.sleep(0.05)
        # The stream ends (its caller leaves), the drain with it; the worker exits and is replaced.
        async with steps.step("the drained worker exits", 15):
            for writer in streams:
                writer.close()
            streams.clear()
            await server.wait_for_line(f"(pid {holder}) died", timeout=15)
            assert await lease_pid() != holder
        async with steps.step("the server stops", 15):
            assert await stopped(server) == 0
        server.assert_clean_output()
    finally:
        for writer in streams:
            writer.close()
        await store.aclose()
        server.kill()
