"""The Tavus-shaped requests of shared/fixtures/tavus: they reach the upstream as the persona sent them."""

from __future__ import annotations

import logging

import orjson
import pytest

from services.iss.block import BLOCK_START
from tests.conftest import FIXTURES, open_stream, post_json, sse_events

TAVUS = FIXTURES / "tavus"
KEY = "tavus-persona-key"


def _headers(name: str) -> dict[str, str]:
    headers = {}
    for line in (TAVUS / name).read_text().splitlines():
        key, _, value = line.partition(":")
        headers[key.strip()] = value.strip().replace("REPLACE_WITH_SERVER_API_KEY", KEY)
    return headers


@pytest.mark.parametrize("overrides", [{"server_api_key": KEY}])
async def test_turn_keeps_system_messages_unchanged_and_in_order(overrides, base_url, upstream, caplog):
    caplog.set_level(logging.INFO, logger="iss_llm")
    body = orjson.loads((TAVUS / "request_turn.json").read_bytes())
    response = await post_json(base_url, body, path="/chat/completions", headers=_headers("request_turn.headers"))
    assert response.code == 200
    events = sse_events(response.body)
    assert events[-1] == "[DONE]"
    sent = upstream.bodies[-1]
    original = body["messages"]
    assert sent["messages"][:-1] == original[:-1]
    assert [m["role"] for m in sent["messages"]] == [m["role"] for m in original]
    assert sent["messages"][-1]["content"].startswith(original[-1]["content"] + "\n\n" + BLOCK_START)
    assert sent["temperature"] == 0.6
    assert any("c7e1f0a2b3" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("overrides", [{"server_api_key": KEY}])
async def test_connectivity_probe(overrides, base_url, caplog):
    caplog.set_level(logging.INFO, logger="iss_llm")
    body = orjson.loads((TAVUS / "probe.json").read_bytes())
    response = await post_json(base_url, body, path="/chat/completions", headers=_headers("probe.headers"))
    assert response.code == 200
    assert sse_events(response.body)[-1] == "[DONE]"
    assert any("tavus-openai-compat-test" in r.getMessage() for r in caplog.records)


async def test_speculative_burst_abandoned_requests_stop_upstream(base_url, upstream):
    bodies = [orjson.loads(line) for line in (TAVUS / "speculative_burst.jsonl").read_text().splitlines() if line]
    upstream.gap = 0.02
    upstream.tokens = 200
    previous = None
    for body in bodies[:-1]:
        _reader, writer, _ = await open_stream(base_url, body, path="/chat/completions",
                                               headers={"conversation-id": "burst"})
        if previous is not None:
            # Both streams were open at once; the longer transcript arrived, the older one is dropped.
            assert upstream.open_streams == 2
            previous.close()
        previous = writer
    upstream.tokens = 5
    upstream.gap = 0.0
    last = await post_json(base_url, bodies[-1], path="/chat/completions", headers={"conversation-id": "burst"})
    previous.close()
    assert sse_events(last.body)[-1] == "[DONE]"
    assert await upstream.wait_streams_closed(1.0)
    assert upstream.aborted_streams == 2
    assert upstream.completed_streams == 1
    assert upstream.bodies[-1]["messages"][:-1] == bodies[-1]["messages"][:-1]
