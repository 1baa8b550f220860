"""FIRST_TOKEN_TIMEOUT: an upstream with no content token by then has failed before the first token."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.conftest import error_of, post_json

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
TIMEOUT = 0.5


def _events(body: bytes) -> tuple[list[bytes], int]:
    """The data payloads of an SSE body, and how many comments it held."""
    blocks = [block for block in body.split(b"\n\n") if block]
    data = [block.removeprefix(b"data: ") for block in blocks if block.startswith(b"data: ")]
    return data, sum(1 for block in blocks if block.startswith(b":"))


async def _health(base_url: str) -> dict:
    return orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)["chat"]


async def _warm_up(base_url: str) -> None:
    """The deadline counts from a request's arrival, and the first request also waits for the ISS
    data (up to ISS_TIMEOUT): one request first, so the deadline is the upstream's alone."""
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 1}})
    assert response.code == 200


# What does not count as content: a role chunk, the upstream's SSE comments, half a line.
NOT_CONTENT = [
    {"pause_after_role": 30},
    {"pause_after_role": 30, "pause_comments": 0.05},
    {"pause_after_role": 30, "pause_partial": True},
]


@pytest.mark.parametrize("overrides", [{"first_token_timeout": TIMEOUT, "keepalive_interval": 0.1}])
@pytest.mark.parametrize("fake", NOT_CONTENT)
async def test_no_content_by_the_deadline_ends_the_stream_with_504(overrides, base_url, upstream, fake):
    await _warm_up(base_url)
    started = time.monotonic()
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True, "x_fake": fake})
    took = time.monotonic() - started
    # The stream began (role chunk, keepalives), so the 504 comes as an SSE error event and [DONE].
    assert response.code == 200
    data, comments = _events(response.body)
    assert data[-1] == b"[DONE]"
    error = orjson.loads(data[-2])["error"]
    assert error["code"] == "first_token_timeout" and "0.5 s" in error["message"]
    # Keepalives went on until the deadline (every 0.1 s for 0.5 s).
    assert comments >= 2
    assert TIMEOUT <= took < 10  # ended by the deadline, not by the upstream's 30 s pause
    assert await upstream.wait_streams_closed(2.0), "the upstream stream was left open"
    assert upstream.aborted_streams == 1
    health = await _health(base_url)
    assert health["error"] == 1 and health["done"] == 1  # the warm-up


@pytest.mark.parametrize("overrides", [{"first_token_timeout": TIMEOUT}])
@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_that_sends_nothing_gets_a_504_status(overrides, base_url, upstream, stream):
    fake = {"fault": "stall"} if stream else {"first_token_delay": 30}
    response = await post_json(base_url, {"messages": MESSAGES, "stream": stream, "x_fake": fake})
    assert response.code == 504
    assert error_of(response)["code"] == "first_token_timeout"
    assert await upstream.wait_streams_closed(2.0)


@pytest.mark.parametrize("overrides", [{"first_token_timeout": TIMEOUT, "fallback_reply": "One moment."}])
async def test_with_a_fallback_reply_the_deadline_becomes_that_answer(overrides, base_url, upstream):
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True,
                                          "x_fake": {"pause_after_role": 30}})
    data, _ = _events(response.body)
    assert data[-1] == b"[DONE]"
    chunks = [orjson.loads(item) for item in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "One moment."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The upstream's role chunk went out at once: the fallback is the rest of that one completion.
    assert len({c["id"] for c in chunks}) == 1, chunks
    assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1, chunks
    assert await upstream.wait_streams_closed(2.0)
    health = await _health(base_url)
    assert health["fallback"] == 1


@pytest.mark.parametrize("overrides", [{"first_token_timeout": TIMEOUT}])
async def test_the_deadline_ends_with_the_first_content_token(overrides, base_url, upstream):
    await _warm_up(base_url)
    # The first token comes in time (about 0.15 s); the answer then lasts well past the deadline.
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True,
                                          "x_fake": {"tokens": 6, "gap": 0.15}})
    data, _ = _events(response.body)
    assert data[-1] == b"[DONE]"
    assert not any(b'"error"' in item for item in data)
    assert upstream.completed_streams == 2
    assert (await _health(base_url))["done"] == 2


async def test_off_by_default(base_url, upstream, app):
    assert app.services.settings.first_token_timeout is None
    task = asyncio.ensure_future(post_json(base_url, {"messages": MESSAGES, "stream": True,
                                                      "x_fake": {"first_token_delay": 1.0, "tokens": 2}}))
    response = await task
    assert _events(response.body)[0][-1] == b"[DONE]"
    assert upstream.completed_streams == 1
