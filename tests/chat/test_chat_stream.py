"""Streamed and whole answers through the official openai client, and what reaches the upstream."""

from __future__ import annotations

import asyncio
import gc

import openai
import orjson
import pytest

from handlers.chat import ChatHandler
from tests.conftest import post_json, sse_events
from tests.fakes.openai_upstream import WORDS

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
EXPECTED = "".join(WORDS[i % len(WORDS)] for i in range(5))


async def _collect(stream) -> tuple[list, str]:
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


@pytest.mark.parametrize("suffix", ["/v1", ""])
async def test_streamed_answer_through_openai_client(base_url, upstream, suffix):
    api = openai.AsyncOpenAI(api_key="k", base_url=base_url + suffix, max_retries=0, timeout=10)
    try:
        stream = await api.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        chunks, text = await _collect(stream)
    finally:
        await api.close()
    assert text == EXPECTED
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" and c.id and c.created for c in chunks)
    assert upstream.bodies[-1]["stream"] is True


async def test_whole_answer_when_not_streamed(client, upstream):
    completion = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 47
    assert upstream.bodies[-1]["stream"] is False


async def test_usage_chunk_passes_through_with_empty_choices(base_url):
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    response = await post_json(base_url, body)
    events = sse_events(response.body)
    assert events[-1] == "[DONE]"
    last = orjson.loads(events[-2])
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 42, "completion_tokens": 5, "total_tokens": 47}


async def test_tool_call_deltas_pass_through(client, upstream, app):
    tools = [{"type": "function", "function": {"name": "locate", "parameters": {"type": "object"}}}]
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, tools=tools, tool_choice="auto"
    )
    chunks, _ = await _collect(stream)
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0][0].function.name == "locate"
    assert "".join(call[0].function.arguments or "" for call in calls) == '{"where": "iss"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The caller's tools reach the upstream untouched, first; the layer's own follow them.
    sent = upstream.bodies[-1]["tools"]
    assert sent[: len(tools)] == tools
    assert {tool["function"]["name"] for tool in sent[len(tools):]} <= {"iss_position", "iss_passes", "iss_crew"}
    assert upstream.bodies[-1]["tool_choice"] == "auto"
    # The console's record of the request shows the call the model made.
    record = app.services.hub.snapshot()[-1]
    assert record["outcome"]["tool_calls"] == [{"name": "locate", "arguments": '{"where": "iss"}'}]
    assert record["requested_model"] == "m"


async def test_every_other_field_reaches_upstream_unchanged(base_url, upstream):
    extra = {
        "temperature": 0.3,
        "max_tokens": 77,
        "top_p": 0.9,
        "response_format": {"type": "json_object"},
        "user": "u-1",
        "stop": ["\n\n"],
        "seed": 7,
        "vendor_specific": {"top_k": 40},
        "stream_options": {"include_usage": True},
    }
    response = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": True, **extra})
    assert response.code == 200
    sent = upstream.bodies[-1]
    for key, value in extra.items():
        assert sent[key] == value, key


async def test_sse_headers_and_framing(base_url):
    response = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": True})
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["X-Request-Id"].startswith("req_")
    body = response.body.decode()
    assert body.endswith("data: [DONE]\n\n")
    frames = body.split("\n\n")[:-1]
    assert all(frame.startswith("data: ") and "\n" not in frame for frame in frames)
    chunks = [orjson.loads(f[6:]) for f in frames[:-1]]
    assert {"id", "object", "created", "model", "choices"} <= set(chunks[0])


@pytest.mark.parametrize("overrides", [{"keepalive_interval": 0.1}])
async def test_keepalive_comments_until_first_token(overrides, base_url, upstream, client):
    upstream.first_token_delay = 0.45
    response = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": True})
    body = response.body.decode()
    before_first = body.split("data: ", 1)[0]
    assert before_first.count(": keepalive\n\n") >= 2
    assert ": keepalive" not in body.split("data: ", 1)[1]
    # The openai client ignores the comments and reads the same answer.
    _, text = await _collect(await client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert text == EXPECTED


@pytest.mark.parametrize("overrides", [{"keepalive_interval": 0.1}])
async def test_keepalives_continue_while_a_model_pauses_after_the_role_chunk(overrides, base_url):
    body = {"model": "m", "messages": MESSAGES, "stream": True, "x_fake": {"pause_after_role": 0.45}}
    response = await post_json(base_url, body)
    frames = response.body.decode().split("\n\n")
    assert frames[0].startswith("data: ") and '"role":"assistant"' in frames[0]
    first_content = next(i for i, f in enumerate(frames) if '"content":"The"' in f)
    assert frames[1:first_content].count(": keepalive") >= 2
    assert frames[-2:] == ["data: [DONE]", ""]


async def test_multi_line_data_fields_are_relayed_as_one_line(client):
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"x_fake": {"multiline": True}}
    )
    _, text = await _collect(stream)
    assert text == EXPECTED


@pytest.mark.parametrize(
    ("overrides", "requested", "expected"),
    [
        ({}, "from-request", "from-request"),
        ({"llm_model": "forced-model"}, "from-request", "forced-model"),
        ({}, None, "gpt-4o-mini"),
    ],
)
async def test_upstream_model_choice(base_url, upstream, overrides, requested, expected):
    body = {"messages": MESSAGES, "stream": True}
    if requested:
        body["model"] = requested
    await post_json(base_url, body)
    assert upstream.bodies[-1]["model"] == expected


async def test_upstream_gets_the_configured_key_not_the_callers(base_url, upstream):
    await post_json(base_url, {"model": "m", "messages": MESSAGES}, headers={"Authorization": "Bearer caller"})
    assert upstream.headers[-1]["Authorization"] == f"Bearer {upstream.api_key}"


async def test_upstream_gets_no_sdk_telemetry_headers(base_url, upstream):
    await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": True})
    sent = {name.lower() for name in upstream.headers[-1]}
    assert not {name for name in sent if name.startswith("x-stainless-")}
    assert {"authorization", "content-type", "user-agent"} <= sent


async def test_models_and_health(base_url, open_notify):
    models = orjson.loads((await post_json(base_url, None, path="/v1/models", method="GET")).body)
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    plain = orjson.loads((await post_json(base_url, None, path="/models", method="GET")).body)
    assert plain == models
    health_response = await post_json(base_url, None, path="/healthz", method="GET")
    assert health_response.code == 200
    health = orjson.loads(health_response.body)
    assert health["backend"]["backend"] == "openai"
    assert "iss" in health and isinstance(health["iss"], dict)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_finished_request_is_freed_without_the_garbage_collector(base_url, upstream, stream):
    """No reference cycle runs through a finished chat handler: with the collector off, nothing of
    the requests' handlers is left once they ended (under load a cycle per request is what makes
    the collector's full passes long, and every stream waits on them)."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            response = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": stream})
            assert response.code == 200
        for _ in range(20):  # the last request's bookkeeping ends a loop iteration or two after its answer
            await asyncio.sleep(0.01)
            left = [o for o in gc.get_objects() if type(o) is ChatHandler]
            if not left:
                break
        assert left == []
    finally:
        gc.enable()
