"""One client cannot stop the server: a cap on open connections, idle ones shed first, no accept() storm."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from collections.abc import AsyncIterator

import orjson
import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient

from bench.procs import raise_nofile
from tests.conftest import ROOT, UPSTREAM_KEY, open_stream
from tests.server.test_server_process import _env, _free_port, lost

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


def _limit_open_files(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


class LimitedServer:
    """`python server.py` under a lowered open-file limit; keeps its line count and the first lines."""

    def __init__(self, env: dict[str, str], port: int, open_files: int) -> None:
        self.env, self.port, self.open_files = env, port, open_files
        self.lines = 0
        self.head: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "server.py"), "--port", str(self.port), cwd=str(ROOT), env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_limit_open_files(self.open_files),
        )
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process and self.process.stdout
        async for line in self.process.stdout:
            self.lines += 1
            if len(self.head) < 200:
                self.head.append(line.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.head)

    async def wait_for(self, needle: str, timeout: float = 15.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if needle in self.text:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{needle!r} not printed:\n{self.text}")

    async def stop(self) -> int:
        assert self.process
        if self.process.returncode is None:
            self.process.terminate()
        code = await asyncio.wait_for(self.process.wait(), 20)
        if self._reader:
            await asyncio.wait_for(self._reader, 5)
        return code


async def _get(url: str, timeout: float = 5.0):
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=timeout,
                                         connect_timeout=timeout)


@contextlib.asynccontextmanager
async def limited_server(upstream, tmp_path) -> AsyncIterator[tuple[LimitedServer, list[asyncio.StreamWriter]]]:
    """The server under a 1,024 open-file limit, serving; the idle connections the test opens go in the
    list. On the way out they are closed and the server must stop cleanly (exit 0, nothing lost in its log)."""
    server = LimitedServer(
        _env(tmp_path, LLM_BACKEND="openai", OPENAI_BASE_URL=upstream.base_url, OPENAI_API_KEY=UPSTREAM_KEY),
        _free_port(), open_files=1024,
    )
    await server.start()
    idle: list[asyncio.StreamWriter] = []
    try:
        await server.wait_for("listening on", 60)
        yield server, idle
    finally:
        for writer in idle:
            writer.close()
        code = await server.stop()
    assert code == 0
    assert not lost(server.text), server.text


async def _flood(port: int, count: int, idle: list[asyncio.StreamWriter]) -> None:
    """`count` idle connections (those the kernel refuses are skipped)."""
    for _ in range(count):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            idle.append(writer)


async def _health_until(base: str, predicate, timeout: float, what: str) -> dict:
    """The /healthz `connections` figures once `predicate` holds on them; every answer on the way is a
    200 (polled, at most `timeout` seconds: a ceiling for a busy machine, not the behaviour)."""
    deadline = time.monotonic() + timeout
    while True:
        health = await _get(base + "/healthz")
        assert health.code == 200, (health.code, health.body[:500])
        connections = orjson.loads(health.body)["connections"]
        if predicate(connections):
            return connections
        assert time.monotonic() < deadline, f"{what}: {connections}"
        await asyncio.sleep(0.05)


async def test_more_idle_connections_than_open_files_cannot_take_healthz_down(io_loop, upstream, tmp_path):
    raise_nofile(4096)  # this test process holds 1,100 sockets of its own
    async with limited_server(upstream, tmp_path) as (server, idle):
        port = server.port
        await _flood(port, 1100, idle)
        # /healthz answers all along; once the server has taken the whole flood in, it closed the
        # idle connections past its cap.
        connections = await _health_until(
            f"http://127.0.0.1:{port}", lambda c: c["idle_closed"] >= 1100 - c["max"], 30,
            "the flood's idle connections past the cap were not closed")
        assert connections["max"] < 1024 // 2  # lowered to what 1,024 descriptors hold
        assert connections["open"] <= connections["max"] + 1
        # A chat request still gets its answer.
        reader, writer, seen = await open_stream(f"http://127.0.0.1:{port}", {"messages": MESSAGES, "stream": True})
        while b"[DONE]" not in seen:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            assert chunk
            seen += chunk
        writer.close()
        # One summary line per interval, not one per attempt.
        assert server.lines < 20, server.text[-3000:]
        assert "Too many open files" not in server.text


@pytest.mark.parametrize("overrides", [{"max_connections": 3}])
async def test_past_the_cap_with_every_connection_busy_a_newcomer_is_refused_at_once(base_url, upstream, app):
    upstream.hold_at = 2  # every stream waits after its first chunks
    streams = [await open_stream(base_url, {"messages": MESSAGES, "stream": True}) for _ in range(3)]
    try:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        answer = await asyncio.wait_for(reader.read(), 5)  # closed by the server, no request needed
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "too_many_connections"
        stats = app.services.connections
        assert stats.refused == 1 and stats.open == 3
    finally:
        upstream.release.set()
        for _, stream_writer, _ in streams:
            stream_writer.close()


@pytest.mark.parametrize("overrides", [{"max_connections": 3}])
async def test_at_the_cap_the_longest_idle_connection_makes_room(base_url, app):
    host, port = base_url.removeprefix("http://").split(":")
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    # Each one accepted by the server (polled, at most 5 s) before the fourth comes.
    deadline = time.monotonic() + 5
    while app.services.connections.open < 3:
        assert time.monotonic() < deadline, "the server did not accept three connections"
        await asyncio.sleep(0.01)
    health = await _get(base_url + "/healthz")
    assert health.code == 200
    # The first idle connection was closed to let /healthz in; the others are still open.
    assert await asyncio.wait_for(idle[0][0].read(), 5) == b""
    assert app.services.connections.idle_closed == 1
    for _, writer in idle:
        writer.close()


async def test_out_of_descriptors_accept_pauses_and_logs_a_count_not_a_storm(io_loop, upstream, tmp_path):
    async with limited_server(upstream, tmp_path) as (server, idle):
        # A few descriptors more than the server holds now: accept() fails long before the cap (16).
        process = psutil.Process(server.process.pid)
        process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds() + 6, 1024))
        await _flood(server.port, 300, idle)
        await _health_until(f"http://127.0.0.1:{server.port}",
                            lambda c: c["accept_errors"] >= 1 and c["idle_closed"] >= 1, 30,
                            "no accept error, or no idle connection closed, after the flood")
        assert server.lines < 20, server.text[-3000:]
        assert server.text.count("Too many open files") == 1, server.text  # the first summary only
