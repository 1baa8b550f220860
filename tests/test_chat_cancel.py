"""A caller that goes away mid-stream closes the upstream stream at once, quietly."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import open_stream

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


async def _until(predicate, timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_disconnect_mid_stream_closes_upstream_within_a_second(base_url, upstream, app, caplog):
    caplog.set_level(logging.INFO)
    _reader, writer, _ = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 500, "gap": 0.02}},
        headers={"conversation-id": "conv-cancel"}, events=3,
    )
    assert upstream.open_streams == 1
    writer.close()
    started = asyncio.get_running_loop().time()
    assert await upstream.wait_streams_closed(1.0), "upstream stream still open 1 s after the caller left"
    closed_after = asyncio.get_running_loop().time() - started
    assert closed_after < 1.0
    assert upstream.aborted_streams == 1 and upstream.completed_streams == 0
    assert await _until(lambda: app.services.inflight.outcomes["cancelled"] == 1, 2.0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("cancelled" in m and "conv-cancel" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("Traceback" in m or "StreamClosedError" in m for m in messages)


async def test_disconnect_before_first_token_closes_upstream(base_url, upstream, app):
    _reader, writer, _ = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"fault": "stall"}}, events=0
    )
    assert await _until(lambda: upstream.open_streams == 1, 5.0)
    writer.close()
    assert await upstream.wait_streams_closed(1.0)
    assert await _until(lambda: app.services.inflight.count == 0, 2.0)
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
    assert await upstream.wait_streams_closed(1.0)
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
    assert await upstream.wait_streams_closed(2.0)
    completion = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content
