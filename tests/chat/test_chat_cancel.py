"""A caller that goes away mid-stream closes the upstream stream at once, quietly.

Time bounds here: the 1 s for the upstream to be closed is the behaviour itself (the promise to
callers who abandon requests; it takes milliseconds). Every other wait is only a ceiling on
polling for something that follows at once, and is set well beyond what a busy machine needs.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from tests.conftest import open_stream, post_json

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


async def _until(predicate, timeout: float) -> bool:
    """True once `predicate()` holds, polled every 10 ms for at most `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _healthz_counts(base_url: str, outcome: str, count: int, timeout: float) -> bool:
    """True once /healthz counts `count` chat requests that ended as `outcome`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
        if health["chat"].get(outcome) == count:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)


async def test_disconnect_mid_stream_closes_upstream_within_a_second(base_url, upstream, app, caplog):
    caplog.set_level(logging.INFO)
    _reader, writer, _ = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 500, "gap": 0.02}},
        headers={"conversation-id": "conv-cancel"}, events=3,
    )
    assert upstream.open_streams == 1
    writer.close()
    # The behaviour is the time: the upstream stops within 1 s of the caller leaving (it takes a
    # few ms; a second is the promise, and leaves room for a busy machine).
    assert await upstream.wait_streams_closed(1.0), "upstream stream still open 1 s after the caller left"
    assert upstream.aborted_streams == 1 and upstream.completed_streams == 0
    assert await _until(lambda: app.services.inflight.outcomes["cancelled"] == 1, 5.0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("cancelled" in m and "conv-cancel" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("Traceback" in m or "StreamClosedError" in m for m in messages)


async def test_disconnect_while_the_upstream_pauses_mid_stream_closes_it_within_a_second(base_url, upstream):
    # The upstream sends the role and three tokens, then pauses (a model thinking, a slow tool).
    # Nothing is written to the caller during the pause, so no failed write can reveal that the
    # caller left: only the server noticing the closed connection stops the upstream.
    upstream.hold_at = 4
    try:
        _reader, writer, seen = await open_stream(
            base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 20}}, events=4
        )
        assert seen.count(b"data: ") == 4 and upstream.open_streams == 1
        writer.close()
        # The behaviour is the time (as above): within 1 s, long before a keepalive (5 s) is due.
        assert await upstream.wait_streams_closed(1.0), "upstream stream still open 1 s after the caller left"
        assert upstream.aborted_streams == 1 and upstream.completed_streams == 0
        assert await _healthz_counts(base_url, "cancelled", 1, 5.0)
    finally:
        upstream.release.set()


async def test_disconnect_before_first_token_closes_upstream(base_url, upstream, app):
    _reader, writer, _ = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"fault": "stall"}}, events=0
    )
    assert await _until(lambda: upstream.open_streams == 1, 5.0)
    writer.close()
    assert await upstream.wait_streams_closed(1.0)  # the behaviour is the time (see above)
    assert await _until(lambda: app.services.inflight.count == 0, 5.0)
    assert app.services.inflight.outcomes["cancelled"] == 1


async def test_openai_client_closing_a_stream_stops_upstream(client, upstream):
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"x_fake": {"tokens": 500, "gap": 0.02}}
    )
    received = 0
    async for _chunk in stream:
        received += 1
        if received == 3:
            break
    await stream.close()
    assert await upstream.wait_streams_closed(1.0)  # the behaviour is the time (see above)
    assert upstream.aborted_streams == 1


@pytest.mark.parametrize("overrides", [{"iss_inject": "off"}])
async def test_server_keeps_serving_after_many_abandoned_streams(overrides, base_url, upstream, client):
    writers = []
    for _ in range(20):
        _reader, writer, _ = await open_stream(
            base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 500, "gap": 0.01}}, events=2
        )
        writers.append(writer)
    for writer in writers:
        writer.close()
    # The behaviour is the time, as above, with a second more for twenty at once.
    assert await upstream.wait_streams_closed(2.0)
    completion = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content


async def test_a_cancelled_stream_logs_one_line_saying_499(base_url, upstream, app, caplog):
    """One line per chat request: the outcome line, with the status, method, path and address the
    access log would have given (the access log leaves chat requests out)."""
    caplog.set_level(logging.INFO)
    _reader, writer, _ = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 500, "gap": 0.02}},
        headers={"X-Request-Id": "rid-cancel-access"}, events=3,
    )
    writer.close()

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "rid-cancel-access" in r.getMessage()]

    assert await _until(lambda: lines(), 5.0), "no log line for the cancelled stream"
    [line] = lines()
    assert (line.outcome, line.status, line.path, line.method) == ("cancelled", 499, "/v1/chat/completions", "POST")
    assert "499 POST /v1/chat/completions" in line.getMessage()
    assert line.levelno == logging.INFO  # speculative inference cancels most requests: routine
    assert not [r for r in caplog.records if r.name == "tornado.access" and r.path == "/v1/chat/completions"]


async def test_the_line_of_a_stream_ended_by_an_error_event_says_that_errors_status(base_url, upstream,
                                                                                          caplog):
    """A 200 stream the upstream broke mid-way ends with an SSE error event: its one line carries
    that error's status (502), not the 200 that went out first."""
    caplog.set_level(logging.INFO)
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True,
                                          "x_fake": {"fault": "drop", "after": 2}},
                               headers={"X-Request-Id": "rid-midstream-access"})
    assert response.code == 200 and b'"error"' in response.body
    [line] = [r for r in caplog.records if "rid-midstream-access" in r.getMessage()]
    assert (line.outcome, line.status) == ("error", 502)
    assert "502 POST /v1/chat/completions" in line.getMessage()
    assert line.levelno == logging.ERROR  # a 5xx an operator alerts on
    assert not [r for r in caplog.records if r.name == "tornado.access" and r.path == "/v1/chat/completions"]
