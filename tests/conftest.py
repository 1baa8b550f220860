"""Shared fixtures: fake outside services on loopback, the app under test, real clients."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import make_app, make_server  # noqa: E402
from config import Settings  # noqa: E402
from tests.fakes.openai_upstream import FakeUpstream  # noqa: E402

# A copy of ../shared/fixtures, so the suite runs wherever the repository is cloned.
FIXTURES = ROOT / "tests" / "data" / "fixtures"

UPSTREAM_KEY = "sk-test-upstream-secret-0123456789"


class AsyncioErrors(logging.Handler):
    """Collects what asyncio logs at ERROR: an exception no task retrieved, a task destroyed pending."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().splitlines()[:2]))


_asyncio_errors = AsyncioErrors()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger("asyncio").addHandler(_asyncio_errors)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # These surface whenever the garbage collector runs, so in whichever test comes next; a
    # lost task error is a bug wherever it shows, and the run fails on it.
    gc.collect()
    if _asyncio_errors.messages:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"asyncio logged {len(_asyncio_errors.messages)} error(s) no code handled:", red=True)
            for message in _asyncio_errors.messages[:20]:
                reporter.write_line(f"  {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port, for this test alone (issue 11)."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def paced_upstream(io_loop) -> FakeUpstream:
    """A fake upstream for server processes: 20 tokens 50 ms apart (a request's x_fake may change it)."""
    fake = FakeUpstream(tokens=20, gap=0.05, api_key=UPSTREAM_KEY)
    io_loop.run_sync(fake.start)
    yield fake
    io_loop.run_sync(fake.close)


@pytest.fixture
def upstream(io_loop) -> FakeUpstream:
    """A fake OpenAI-compatible server on loopback."""
    fake = FakeUpstream(tokens=5, api_key=UPSTREAM_KEY)
    io_loop.run_sync(fake.start)
    yield fake
    io_loop.run_sync(fake.close)


@pytest.fixture
def open_notify(io_loop):
    """A fake Open Notify on loopback."""
    from tests.fakes.iss_sources import FakeIssSources

    fake = FakeIssSources()
    io_loop.run_sync(fake.start)
    yield fake
    io_loop.run_sync(fake.close)


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes: parametrize `overrides` to set them."""
    return {}


@pytest.fixture
def settings(upstream, open_notify, tmp_path, overrides) -> Settings:
    base = Settings(
        llm_backend="openai",
        openai_api_key=UPSTREAM_KEY,
        openai_base_url=upstream.base_url,
        upstream_timeout=5.0,
        keepalive_interval=5.0,
        iss_sources=("open-notify",),
        iss_api_url=open_notify.url("open-notify"),
        astros_url=open_notify.url("astros"),
        iss_timeout=1.0,
        iss_cache_dir=tmp_path / "cache",
        console_token="test-console-token",
    )
    return base.with_overrides(**overrides)


@pytest.fixture
def app(settings, io_loop):
    application = make_app(settings)
    yield application
    io_loop.run_sync(application.services.close)


@pytest.fixture
def http_server(app, settings, io_loop, http_server_port):
    """The app behind the server `main()` runs (its limits and timeouts), on a loopback port."""
    server = make_server(app, settings)
    server.add_socket(http_server_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=10)


@pytest.fixture
def base_url(http_server, http_server_port) -> str:
    return f"http://127.0.0.1:{http_server_port[1]}"


@pytest.fixture
def client(base_url, io_loop) -> openai.AsyncOpenAI:
    """The official openai client pointed at this server (base URL with /v1)."""
    api = openai.AsyncOpenAI(api_key="caller-key", base_url=f"{base_url}/v1", max_retries=0, timeout=10)
    yield api
    io_loop.run_sync(api.close)


async def post_json(
    base_url: str, body: Any, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None,
    raw: bytes | None = None, method: str = "POST",
) -> HTTPResponse:
    """A plain HTTP request (tornado's client), returning the response whatever its status."""
    payload = raw if raw is not None else orjson.dumps(body)
    return await AsyncHTTPClient().fetch(
        base_url + path, method=method, body=payload if method == "POST" else None,
        headers={"Content-Type": "application/json", **(headers or {})},
        raise_error=False, request_timeout=15,
    )


def error_of(response: HTTPResponse) -> dict[str, Any]:
    """The OpenAI error object of a response, checking its shape."""
    body = orjson.loads(response.body)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def sse_events(body: bytes) -> list[str]:
    """The data payloads of an SSE body, parsed by sseclient-py."""
    import sseclient

    return [event.data for event in sseclient.SSEClient(iter([body])).events()]


async def open_stream(
    base_url: str, body: Any, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None,
    events: int = 1,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A chat request over a raw socket (so a test can drop it at will), read until `events` data events."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = orjson.dumps(body)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    seen = b""
    while seen.count(b"data: ") < events:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, f"connection closed after {seen!r}"
        seen += chunk
    return reader, writer, seen
