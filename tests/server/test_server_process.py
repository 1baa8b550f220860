"""The real server process: start-up, curl -N seeing events one by one, SIGTERM draining in-flight streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import orjson
import pytest

from bench.procs import die_with_parent, lost_in_log
from tests.conftest import ROOT, UPSTREAM_KEY, open_stream
from tests.redis_server import free_port

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


def lost(text: str) -> dict[str, int]:
    """bench.procs.lost_in_log: Python's own signs of a lost error and the server's logged exceptions."""
    return lost_in_log(text)


_free_port = free_port  # many tests import it from here


class ServerProcess:
    """`python server.py` in a subprocess, its output collected as it runs."""

    def __init__(self, env: dict[str, str], *args: str, before_exec: Callable[[], None] | None = None) -> None:
        self.env = env
        self.args = args
        self.before_exec = before_exec  # in the child, before exec: what a launcher would leave it
        self.output: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self.signalled = False

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "server.py"), *self.args,
            cwd=str(ROOT), env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            # Its own process group, so kill() reaches its workers as well; and killed with the test
            # run, however that ends (its workers, orphaned, then drain and exit by themselves).
            process_group=0, preexec_fn=self._prepare,
        )
        self._reader = asyncio.ensure_future(self._read())

    def _prepare(self) -> None:
        die_with_parent(signal.SIGKILL)
        if self.before_exec is not None:
            self.before_exec()

    async def _read(self) -> None:
        assert self.process and self.process.stdout
        async for line in self.process.stdout:
            self.output.append(line.decode(errors="replace"))

    async def wait_for_line(self, needle: str, timeout: float = 15.0) -> str:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for line in self.output:
                if needle in line:
                    return line
            if self.process and self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"{needle!r} not printed; output:\n{''.join(self.output)}")

    async def listening_port(self, timeout: float = 60.0) -> int:
        """The port the server says it listens on: start it with `--port 0` and the kernel picks a free
        one as it binds (a port picked beforehand may be taken by then on a busy machine)."""
        line = await self.wait_for_line("listening on http://", timeout)
        return int(re.search(r"listening on http://[^ ]+:(\d+)", line).group(1))

    def terminate(self) -> None:
        assert self.process
        self.process.send_signal(signal.SIGTERM)
        self.signalled = True

    async def stop(self) -> int:
        """SIGTERM (once: a second one means "skip the drain") and the exit code."""
        assert self.process
        if self.process.returncode is None and not self.signalled:
            self.terminate()
        code = await asyncio.wait_for(self.process.wait(), 20)
        if self._reader:
            await asyncio.wait_for(self._reader, 5)
        return code

    def assert_clean_output(self) -> None:
        """Nothing the server printed is an exception or an error asyncio says no code handled."""
        text = "".join(self.output)
        assert not lost(text), f"{lost(text)} in the server's output:\n{text}"

    def kill(self) -> None:
        """SIGKILL to the server and its workers, unless it has ended (then its group is no longer
        surely ours: an ended server waited for its workers)."""
        if self.process and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONUNBUFFERED": "1",
        "ISS_SOURCES": "tle",
        "ISS_CACHE_DIR": str(tmp_path / "cache"),
        "TLE_URL": "http://127.0.0.1:9/unreachable",
        "CONSOLE_TOKEN": "process-console-token",
    }
    env.update(extra)
    return env


async def test_sigterm_lets_in_flight_streams_finish_then_exits_0(io_loop, paced_upstream, tmp_path):
    port = _free_port()
    server = ServerProcess(
        _env(tmp_path, LLM_BACKEND="openai", OPENAI_BASE_URL=paced_upstream.base_url, OPENAI_API_KEY=UPSTREAM_KEY),
        "--port", str(port),
    )
    await server.start()
    try:
        await server.wait_for_line("listening on")
        reader, writer, seen = await open_stream(
            f"http://127.0.0.1:{port}", {"messages": MESSAGES, "stream": True}
        )
        server.terminate()
        await server.wait_for_line("shutting down")
        # No new connections once draining began.
        with pytest.raises(OSError):
            _, late = await asyncio.open_connection("127.0.0.1", port)
            late.close()
        while b"data: [DONE]" not in seen:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, "the in-flight stream was cut before [DONE]"
            seen += chunk
        writer.close()
        assert seen.count(b'"content"') >= 20
        assert await server.stop() == 0
        server.assert_clean_output()
        assert paced_upstream.completed_streams == 1
    finally:
        server.kill()


async def test_drain_refuses_new_requests_and_ends_late_streams_with_an_error(io_loop, paced_upstream, tmp_path):
    port = _free_port()
    server = ServerProcess(
        _env(tmp_path, LLM_BACKEND="openai", OPENAI_BASE_URL=paced_upstream.base_url, OPENAI_API_KEY=UPSTREAM_KEY,
             DRAIN_TIMEOUT="1"),
        "--port", str(port),
    )
    await server.start()
    try:
        await server.wait_for_line("listening on")
        long_stream = {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 1000, "gap": 0.02}}
        reader, writer, seen = await open_stream(f"http://127.0.0.1:{port}", long_stream)
        # A second, kept-alive connection that has already finished one request.
        api = openai.AsyncOpenAI(api_key="k", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=10)
        assert (await api.chat.completions.create(model="m", messages=MESSAGES)).choices
        server.terminate()
        await server.wait_for_line("shutting down")
        with pytest.raises(openai.APIStatusError) as refused:
            await api.chat.completions.create(model="m", messages=MESSAGES)
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "server_shutting_down"
        await api.close()
        while b"data: [DONE]" not in seen:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, "the stream was cut without an error event"
            seen += chunk
        writer.close()
        events = [e for e in seen.split(b"\r\n") if e.startswith(b"data: ")]
        last_event = seen[seen.rindex(b"data: {"):]
        assert b'"server_shutting_down"' in last_event, events[-3:]
        assert await server.stop() == 0
        server.assert_clean_output()
        assert await paced_upstream.wait_streams_closed(2.0)
    finally:
        server.kill()


async def test_warns_loudly_beyond_loopback_without_a_key(io_loop, tmp_path):
    server = ServerProcess(_env(tmp_path), "--host", "0.0.0.0", "--port", str(_free_port()))
    await server.start()
    try:
        line = await server.wait_for_line("WITHOUT SERVER_API_KEY")
        assert "WARNING" in line
        console = await server.wait_for_line("/console?token=")
        assert "process-console-token" in console
    finally:
        assert await server.stop() == 0


async def test_no_warning_on_loopback_or_with_a_key(io_loop, tmp_path):
    server = ServerProcess(_env(tmp_path, SERVER_API_KEY="k" * 32), "--host", "0.0.0.0", "--port", str(_free_port()))
    await server.start()
    try:
        await server.wait_for_line("listening on")
    finally:
        assert await server.stop() == 0
    assert not any("WITHOUT SERVER_API_KEY" in line for line in server.output)
    assert not any("k" * 32 in line for line in server.output)


async def test_bad_configuration_exits_with_a_clear_message(io_loop, tmp_path):
    server = ServerProcess(_env(tmp_path, ISS_INJECT="sideways"), "--port", str(_free_port()))
    await server.start()
    code = await asyncio.wait_for(server.process.wait(), 15)
    await asyncio.wait_for(server._reader, 5)
    assert code == 2
    text = "".join(server.output)
    assert "ISS_INJECT" in text and "Traceback" not in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
async def test_curl_sees_each_event_as_it_is_sent(base_url, upstream):
    # The upstream pauses before its fourth chunk: whatever curl has printed by then was flushed
    # one event at a time, not buffered until the end.
    upstream.hold_at = 3
    body = orjson.dumps({"model": "m", "messages": MESSAGES, "stream": True}).decode()
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", "20", "-H", "Content-Type: application/json", "-d", body,
        f"{base_url}/v1/chat/completions", stdout=asyncio.subprocess.PIPE,
    )
    try:
        seen: list[bytes] = []
        while len(seen) < 3:
            line = await asyncio.wait_for(curl.stdout.readline(), 10)
            if line.startswith(b"data: "):
                seen.append(line)
        assert upstream.open_streams == 1 and not upstream.release.is_set()
        assert b'"role":"assistant"' in seen[0]
        upstream.release.set()
        rest = await asyncio.wait_for(curl.stdout.read(), 10)
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert await asyncio.wait_for(curl.wait(), 10) == 0
    finally:
        if curl.returncode is None:
            curl.kill()


class SilentRedis:
    """A Redis that accepts connections and never answers (a hung one); `connected` once one came."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)
        self.connected.set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        for writer in self.held:
            writer.close()
        if self.server is not None:
            self.server.close()


@pytest.fixture
def silent_redis(io_loop):
    redis = SilentRedis()
    io_loop.run_sync(redis.start)
    yield redis
    io_loop.run_sync(redis.close)


async def test_sigterm_while_starting_stops_cleanly(io_loop, tmp_path, silent_redis):
    # A Redis that accepts connections and never answers holds the start (the ISS lease waits for
    # its first answer). The server is frozen the moment it connects, signalled, and let go: the
    # SIGTERM lands while it is starting, and it must stop as it does once serving, exit 0.
    import psutil

    from tests.ops.test_workers import wait_until

    server = ServerProcess(_env(tmp_path, REDIS_URL=silent_redis.url), "--port", "0")
    await server.start()
    try:
        await asyncio.wait_for(silent_redis.connected.wait(), 60)
        server.process.send_signal(signal.SIGSTOP)
        frozen = psutil.Process(server.process.pid)
        await wait_until(lambda: frozen.status() == psutil.STATUS_STOPPED, 30, "not frozen")
        server.terminate()
        server.process.send_signal(signal.SIGCONT)
        assert await server.stop() == 0, "".join(server.output)
        assert any("stopped" in line for line in server.output), "".join(server.output)
        # It never opened for requests nor printed a console address for a server that is gone.
        assert not any("listening on" in line for line in server.output), "".join(server.output)
        server.assert_clean_output()
    finally:
        server.kill()


async def test_sigterm_while_workers_start_stops_them_cleanly(io_loop, tmp_path, silent_redis):
    # The same with workers: the parent is signalled while both are still starting (frozen as
    # they wait on the silent Redis); each must drain and exit 0 rather than die by the signal.
    import psutil

    from tests.ops.test_workers import wait_until
    from tests.support import sigterm_reached

    server = ServerProcess(_env(tmp_path, REDIS_URL=silent_redis.url), "--port", "0", "--workers", "2")
    await server.start()
    try:
        await asyncio.wait_for(silent_redis.connected.wait(), 60)
        parent = psutil.Process(server.process.pid)
        workers = parent.children()
        assert len(workers) == 2
        for worker in workers:
            worker.suspend()
        await wait_until(lambda: all(w.status() == psutil.STATUS_STOPPED for w in workers), 30, "not frozen")
        server.terminate()

        # The parent passes the signal on: it waits, pending, in each frozen worker.
        await wait_until(lambda: all(sigterm_reached(w.pid) for w in workers), 30, "SIGTERM not passed on")
        for worker in workers:
            worker.resume()
        assert await server.stop() == 0, "".join(server.output)
        assert not any("died" in line or "exit -15" in line for line in server.output), "".join(server.output)
        server.assert_clean_output()
    finally:
        server.kill()
