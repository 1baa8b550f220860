"""A turn that needs both a tool of the caller's app and one of the layer's: what real clients build.

The fake model calls the caller's get_weather and the layer's iss_passes in every order and
chunking real models use (tests/fakes/openai_upstream.scripted_round); each answer goes through
the official openai client's stream accumulation (and LangChain's), and the test asserts what the
client built: exactly one get_weather call, its arguments valid JSON, finish_reason "tool_calls".
"""

from __future__ import annotations

import functools
import json
import operator
import time

import orjson
import pytest

from tests.conftest import post_json, sse_events

PARIS = [{"role": "user", "content": "When can I see the ISS from Paris, and what is the weather there?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather at a place.", "strict": True,
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "round": {"type": "integer"}},
                   "required": ["location", "round"], "additionalProperties": False}}}
ORDERS = ["layer_first", "caller_first", "interleaved", "whole", "whole_no_index"]
# The fake's usage: round n is 100n+7 prompt and 10n+3 completion tokens; two rounds in all.
TWO_ROUNDS = {"prompt_tokens": 107 + 207, "completion_tokens": 13 + 23, "total_tokens": 120 + 230}


def _chunks(body: bytes) -> list[dict]:
    return [orjson.loads(data) for data in sse_events(body) if data != "[DONE]"]


@pytest.mark.parametrize("pieces", [1, 2, 9])
@pytest.mark.parametrize("order", ORDERS)
async def test_each_call_order_gives_the_openai_client_one_well_formed_call(order, pieces, client, upstream):
    upstream.scripted_tools = True
    async with client.chat.completions.stream(
        model="m", messages=PARIS, tools=[WEATHER], extra_body={"x_fake": {"order": order, "pieces": pieces}},
    ) as stream:
        ids, roles = set(), 0
        async for event in stream:
            if event.type == "chunk":
                ids.add(event.chunk.id)
                roles += sum(1 for choice in event.chunk.choices if choice.delta.role)
        completion = await stream.get_final_completion()
    [choice] = completion.choices
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "round": 2}
    assert call.function.parsed_arguments == {"location": "Paris", "round": 2}  # the SDK parsed it too
    assert call.id and call.type == "function"
    assert choice.finish_reason == "tool_calls"
    assert "You can see it at:" in choice.message.content
    assert len(ids) == 1 and roles == 1  # one completion id over both rounds, one role chunk
    assert upstream.requests == 2
    # The second round carried the layer's call and its result, and none of the caller's.
    second = upstream.bodies[-1]["messages"]
    assert [c["function"]["name"] for c in second[-2]["tool_calls"]] == ["iss_passes"]
    assert second[-1]["role"] == "tool" and "Paris, France" in second[-1]["content"]


async def test_a_round_with_only_the_callers_calls_sends_them_once(client, upstream):
    upstream.scripted_tools = True
    async with client.chat.completions.stream(
        model="m", messages=PARIS, tools=[WEATHER], extra_body={"x_fake": {"order": "caller_only", "pieces": 5}},
    ) as stream:
        completion = await stream.get_final_completion()
    [choice] = completion.choices
    [call] = choice.message.tool_calls
    assert (call.function.name, call.function.parsed_arguments) == ("get_weather", {"location": "Paris", "round": 1})
    assert choice.finish_reason == "tool_calls" and upstream.requests == 1


@pytest.mark.parametrize("order", ["caller_first", "interleaved", "whole"])
async def test_a_caller_call_the_model_does_not_repeat_is_not_orphaned(order, base_url, upstream):
    """The model, given the layer's result, no longer calls the caller's tool: the caller gets no call
    (the first round's was held, then dropped) and finish_reason "stop"."""
    upstream.scripted_tools = True
    body = {"model": "m", "messages": PARIS, "stream": True, "tools": [WEATHER],
            "x_fake": {"order": order, "again": False}}
    chunks = _chunks((await post_json(base_url, body)).body)
    assert not [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "You can see it at:" in "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


@pytest.mark.parametrize("shape", ["empty", "absent", "litellm"])
async def test_streamed_usage_is_the_sum_of_every_round_whatever_its_chunk_shape(shape, base_url, upstream):
    upstream.scripted_tools = True
    body = {"model": "m", "messages": PARIS, "stream": True, "tools": [WEATHER],
            "stream_options": {"include_usage": True}, "x_fake": {"usage": shape}}
    chunks = _chunks((await post_json(base_url, body)).body)
    usages = [c["usage"] for c in chunks if c.get("usage")]
    assert usages == [TWO_ROUNDS]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == TWO_ROUNDS  # one usage chunk, the last
    assert len({c["id"] for c in chunks}) == 1


async def test_usage_streamed_and_not_agree(client, upstream):
    upstream.scripted_tools = True
    whole = await client.chat.completions.create(model="m", messages=PARIS, tools=[WEATHER])
    assert whole.usage.model_dump(exclude_none=True) == TWO_ROUNDS
    [call] = whole.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["round"] == 2
    stream = await client.chat.completions.create(model="m", messages=PARIS, tools=[WEATHER], stream=True,
                                                  stream_options={"include_usage": True})
    usage = [chunk.usage async for chunk in stream if chunk.usage]
    assert [u.model_dump(exclude_none=True) for u in usage] == [TWO_ROUNDS]
    assert upstream.requests == 4


async def test_a_refusal_pauses_the_tools_for_that_model_only(base_url, upstream, app):
    upstream.refuse_tools_for = {"small-local"}
    small = {"model": "small-local", "messages": PARIS, "stream": True}
    response = await post_json(base_url, small)
    assert response.code == 200 and upstream.requests == 2 and "tools" not in upstream.bodies[-1]
    await post_json(base_url, small)
    assert upstream.requests == 3 and "tools" not in upstream.bodies[-1]  # paused: not offered again
    await post_json(base_url, {**small, "model": "gpt-4o"})
    offered = [tool["function"]["name"] for tool in upstream.bodies[-1].get("tools") or ()]
    assert "iss_passes" in offered  # another model still gets them
    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    [paused] = health["iss_tools"]["paused_models"]
    assert paused["model"] == "small-local" and 590 < paused["seconds_left"] <= 600
    assert "iss_tools" not in health["backend"]


async def test_layer_calls_past_the_limit_get_an_error_result(base_url, upstream, app):
    upstream.scripted_tools = True
    body = {"model": "m", "messages": PARIS, "stream": True, "x_fake": {"layer_calls": 10}}
    response = await post_json(base_url, body)
    assert response.code == 200
    results = [m for m in upstream.bodies[-1]["messages"] if m["role"] == "tool"]
    assert len(results) == 10  # every call answered, as the API requires
    ran = [m for m in results if "Paris, France" in m["content"]]
    refused = [m for m in results if "not run: at most 4" in m["content"]]
    assert (len(ran), len(refused)) == (4, 6)
    status = app.services.backend.describe()["iss_tools"]
    assert status["calls"] == 4 and status["not_run"] == 6


@pytest.mark.parametrize("overrides", [{"iss_tool_result_bytes": 1500}])
async def test_tool_results_sent_upstream_are_bounded_in_bytes(overrides, base_url, upstream):
    upstream.scripted_tools = True
    body = {"model": "m", "messages": PARIS, "stream": True, "x_fake": {"layer_calls": 3}}
    assert (await post_json(base_url, body)).code == 200
    results = [m["content"] for m in upstream.bodies[-1]["messages"] if m["role"] == "tool"]
    assert len(results) == 3
    assert sum(len(r.encode()) for r in results) <= 1500 + 3 * 200
    assert any("ISS_TOOL_RESULT_BYTES" in r for r in results)


async def test_langchain_bind_tools_streaming_builds_one_call(base_url, upstream):
    langchain_openai = pytest.importorskip("langchain_openai")
    upstream.scripted_tools = True
    llm = langchain_openai.ChatOpenAI(
        model="m", base_url=f"{base_url}/v1", api_key="caller-key", max_retries=0, streaming=True,
        extra_body={"x_fake": {"order": "caller_first", "pieces": 3}},
    ).bind_tools([WEATHER])
    parts = [part async for part in llm.astream(PARIS[0]["content"])]
    message = functools.reduce(operator.add, parts)
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("get_weather", {"location": "Paris", "round": 2})]
    assert not message.invalid_tool_calls
    assert message.response_metadata.get("finish_reason") == "tool_calls"


@pytest.mark.parametrize("stream", [True, False])
async def test_the_console_shows_tokens_per_second_for_streamed_answers_only(stream, base_url, upstream, app):
    upstream.gap = 0.01  # a streamed answer takes time to generate
    response = await post_json(base_url, {"model": "m", "messages": PARIS, "stream": stream})
    assert response.code == 200
    app.services.hub.flush()
    [record] = [r for r in app.services.hub.snapshot() if r.get("status") == "done"]
    speed = record["outcome"]["tokens_per_second"]
    if stream:
        assert isinstance(speed, float) and 0 < speed < 1000
    else:
        assert speed is None


@pytest.mark.parametrize("overrides", [{"first_token_timeout": 1.3, "fallback_reply": "One moment."}])
async def test_the_first_token_deadline_holds_across_tool_rounds(overrides, base_url, upstream, app):
    """Each round takes the model 1 s before its first chunk: the answer's first word would come after
    2 s; the deadline ends it at 1.3 s, while the layer works (its tool run or its second round)."""
    await app.services.tracker.current()
    upstream.scripted_tools = True
    upstream.first_token_delay = 1.0
    started = time.monotonic()
    response = await post_json(base_url, {"model": "m", "messages": PARIS, "stream": True})
    elapsed = time.monotonic() - started
    assert response.code == 200
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in _chunks(response.body) if c["choices"])
    assert "One moment." in text and "You can see it at" not in text
    assert 1.3 <= elapsed < 1.9, elapsed


@pytest.mark.parametrize("order", ORDERS)
async def test_each_call_order_not_streamed_gives_one_call_and_the_rounds_usage(order, client, upstream):
    upstream.scripted_tools = True
    whole = await client.chat.completions.create(model="m", messages=PARIS, tools=[WEATHER],
                                                 extra_body={"x_fake": {"order": order}})
    [choice] = whole.choices
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"location": "Paris",
                                                                                         "round": 2})
    assert choice.finish_reason == "tool_calls"
    assert whole.usage.model_dump(exclude_none=True) == TWO_ROUNDS


@pytest.mark.parametrize("overrides", [{"server_api_key": "sk-server-key-0123456789"}])
async def test_paused_models_are_a_detail_behind_the_server_key(overrides, base_url, upstream):
    upstream.refuse_tools_for = {"small-local"}
    key = {"Authorization": "Bearer sk-server-key-0123456789"}
    assert (await post_json(base_url, {"model": "small-local", "messages": PARIS}, headers=key)).code == 200
    public = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    assert "iss_tools" not in public and "iss_tools" not in public["backend"]
    detailed = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET", headers=key)).body)
    assert [p["model"] for p in detailed["iss_tools"]["paused_models"]] == ["small-local"]
