"""A bug inside this server reaches the caller as a clean OpenAI error, never as a traceback.

The collaborators `make_app` is handed here raise where none should (a backend mid-stream, a
tracker that breaks its never-raises promise): the two ways a 500 is written, as an HTTP status
before the stream began and as an SSE error event after, are reached through real HTTP.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from app import build_services, make_app
from services.common.openai_format import Chunk
from services.iss.state import IssState
from services.ops import logs
from services.upstream.base import ToolLog
from tests.conftest import UPSTREAM_KEY, error_of, post_json, sse_events
from tests.console.test_console import connect, console_cookie, read_frame
from tests.support import TrackerOverride

SERVER_KEY = "server-key-for-the-500-tests-0123456789"
AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}
MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
# What the unexpected exception says: a detail and a file path that must stay inside the server.
DETAIL = "bug-detail-5f0e in /srv/iss-llm/secret_module.py"

# A bug whose message holds the server's own OPENAI_API_KEY (an object's repr, a URL with the key...).
KEYED_DETAIL = f"client built with api_key={UPSTREAM_KEY} failed"


def _leaks(text: str) -> list[str]:
    """What of the exception, its traceback or a key is in `text`."""
    found = [needle for needle in ("Traceback", 'File "', ".py", "RuntimeError", "bug-detail-5f0e",
                                   SERVER_KEY, UPSTREAM_KEY) if needle in text]
    return found


def _chunk(delta: dict[str, Any]) -> Chunk:
    return Chunk.of({"id": "chatcmpl-broken", "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": "broken", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


class BrokenBackend:
    """An LLM backend with a bug: it raises RuntimeError after `x_fake.raise_after` chunks (or, made
    with `describe_raises`, as soon as the handler asks where requests go)."""

    name = "broken"

    def __init__(self, describe_raises: bool = False, detail: str = DETAIL) -> None:
        self.describe_raises = describe_raises
        self.detail = detail

    def describe(self) -> dict[str, Any]:
        if self.describe_raises:
            raise RuntimeError(self.detail)
        return {"backend": self.name}

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncIterator[Chunk]:
        after = int((params.get("x_fake") or {}).get("raise_after", 0))
        if after:
            yield _chunk({"role": "assistant", "content": ""})
        for index in range(1, after):
            yield _chunk({"content": f" word{index}"})
        raise RuntimeError(self.detail)

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                       ) -> bytes:
        raise RuntimeError(self.detail)

    async def close(self) -> None:
        return None


class BrokenTracker(TrackerOverride):
    """The real tracker, but `current()` raises: a bug that breaks the Tracker's never-raises promise."""

    async def current(self) -> IssState | None:
        raise RuntimeError(DETAIL)


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"server_api_key": SERVER_KEY}


@pytest.fixture
def broken() -> str:
    """Which collaborator has the bug: "backend", "describe" (the backend's describe()) or "tracker"."""
    return "backend"


@pytest.fixture
def app(settings, io_loop, broken):
    backend = {"backend": BrokenBackend(), "describe": BrokenBackend(describe_raises=True),
               "keyed": BrokenBackend(detail=KEYED_DETAIL),
               "keyed-describe": BrokenBackend(describe_raises=True, detail=KEYED_DETAIL)}.get(broken)
    services = build_services(settings, backend=backend)
    if broken == "tracker":
        services.tracker = BrokenTracker(services.tracker)
    application = make_app(settings, services)
    yield application
    io_loop.run_sync(application.services.close)


def _assert_server_error(error: dict[str, Any]) -> None:
    assert error["type"] == "server_error", error
    assert error["message"].startswith("The server had an error"), error


def _assert_clean_log(caplog: pytest.LogCaptureFixture) -> None:
    # The failure is logged (an operator must see the bug), never with a key in it.
    assert [r for r in caplog.records if r.levelno >= logging.ERROR], "the bug left no ERROR in the log"
    assert SERVER_KEY not in caplog.text and UPSTREAM_KEY not in caplog.text


@pytest.mark.parametrize("stream", [True, False])
async def test_a_bug_before_the_first_token_is_a_clean_500(base_url, caplog, stream):
    caplog.set_level(logging.DEBUG)
    response = await post_json(base_url, {"messages": MESSAGES, "stream": stream}, headers=AUTH)
    assert response.code == 500
    assert response.headers["Content-Type"].startswith("application/json")
    _assert_server_error(error_of(response))
    assert _leaks(response.body.decode()) == []
    _assert_clean_log(caplog)


async def test_a_bug_after_the_stream_began_is_an_sse_error_event(base_url, caplog):
    caplog.set_level(logging.DEBUG)
    body = {"messages": MESSAGES, "stream": True, "x_fake": {"raise_after": 3}}
    response = await post_json(base_url, body, headers=AUTH)
    assert response.code == 200
    events = sse_events(response.body)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1, events
    assert [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:3]] == ["", " word1", " word2"]
    error = orjson.loads(events[-2])
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}, error
    _assert_server_error(error["error"])
    assert _leaks(response.body.decode()) == []
    _assert_clean_log(caplog)

    # The openai client meets it as an APIError after the tokens it got, with the same clean message.
    api = openai.AsyncOpenAI(api_key=SERVER_KEY, base_url=base_url + "/v1", max_retries=0, timeout=10)
    received = []
    try:
        with pytest.raises(openai.APIError) as caught:
            async for chunk in await api.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, extra_body={"x_fake": {"raise_after": 3}}
            ):
                received.append(chunk)
    finally:
        await api.close()
    assert len(received) == 3
    assert _leaks(str(caught.value)) == []

    # Nor does the console, which shows every request and how it ended, get the exception.
    feed = await connect(base_url, await console_cookie(base_url))
    try:
        hello = await read_frame(feed)
    finally:
        feed.close()
    assert hello["type"] == "hello" and len(hello["requests"]) == 2
    assert all(r["status"] == "error" for r in hello["requests"]), hello["requests"]
    assert _leaks(orjson.dumps(hello).decode()) == []


@pytest.mark.parametrize(
    ("broken", "method", "path", "body"),
    [("tracker", "POST", "/v1/chat/completions", {"messages": MESSAGES, "stream": True}),
     ("tracker", "POST", "/chat/completions", {"messages": MESSAGES}),
     ("tracker", "GET", "/iss", None),
     ("describe", "POST", "/v1/chat/completions", {"messages": MESSAGES, "stream": True}),
     ("describe", "GET", "/healthz", None)],
)
async def test_an_uncaught_exception_in_a_handler_is_a_clean_500(broken, base_url, caplog, method, path, body):
    # Whichever way the 500 is written (the chat handler's own catch, or the base handler's
    # write_error for what escapes a handler), the caller gets the same clean error.
    caplog.set_level(logging.DEBUG)
    response = await post_json(base_url, body, path=path, method=method, headers=AUTH)
    assert response.code == 500
    assert response.headers["Content-Type"].startswith("application/json")
    _assert_server_error(error_of(response))
    assert _leaks(response.body.decode()) == []
    _assert_clean_log(caplog)


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize(
    ("broken", "path", "body"),
    [("keyed", "/v1/chat/completions", {"messages": MESSAGES, "stream": True}),  # the chat handler's catch
     ("keyed", "/chat/completions", {"messages": MESSAGES}),
     ("keyed-describe", "/healthz", None)],  # what escapes a handler (ApiHandler.log_exception)
)
async def test_a_bug_is_logged_on_one_line_without_traceback_or_the_configured_key(
    broken, base_url, settings, log_format, path, body
):
    # The server's log handler, as main() configures it (the configured keys are its secrets).
    stream = io.StringIO()
    root = logging.getLogger()
    kept, level = list(root.handlers), root.level
    handler = logs.configure(log_format, "debug", stream=stream,
                             secrets=(settings.openai_api_key, settings.server_api_key, settings.console_token))
    try:
        response = await post_json(base_url, body, path=path, method="POST" if body else "GET", headers=AUTH)
    finally:
        root.removeHandler(handler)
        for old in kept:
            root.addHandler(old)
        root.setLevel(level)
    assert response.code == 500
    text = stream.getvalue()
    assert "Traceback" not in text and 'File "' not in text and UPSTREAM_KEY not in text
    [bug] = [line for line in text.splitlines() if "RuntimeError" in line]  # one line holds the bug
    assert "ERROR" in bug and "client built with api_key=*** failed" in bug
    assert "tests/chat/test_internal_errors.py:" in bug and (" in describe" in bug or " in complete" in bug
                                                      or " in stream" in bug)
    if log_format == "json":
        assert orjson.loads(bug)["exc_type"] == "RuntimeError"
