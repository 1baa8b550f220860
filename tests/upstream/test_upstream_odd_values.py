"""Odd values in an upstream's chunks are the caller's to read and never a 500: what the record takes
(usage, finish reason, tool calls) is type-checked and bounded; a stream ends with exactly one [DONE]."""

from __future__ import annotations

import logging

import orjson
import pytest

from tests.conftest import post_json, sse_events

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]

ODD_CHUNKS = [
    {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": [1, 2, 3]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [],
     "usage": {"prompt_tokens": 1, "completion_tokens": "many", "total_tokens": None, "x" * 500: 1}},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"name": "a", "arguments": "{"}},
        {"index": "1", "function": {"name": 5, "arguments": ["x"]}},
        {"index": None, "function": "f"},
        {"index": 2.5},
        7,
    ]}, "finish_reason": 5}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": "text", "finish_reason": []}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": 42,
                                                                                         "tool_calls": 5}}]},
]


@pytest.mark.parametrize("overrides", [{"iss_tools": False}, {}], ids=["tools-off", "tools-on"])
async def test_odd_bookkeeping_values_pass_through_and_the_stream_ends_with_one_done(overrides, base_url, app,
                                                                                      caplog):
    body = {"model": "m", "messages": MESSAGES, "stream": True, "x_fake": {"extra_chunks": ODD_CHUNKS}}
    with caplog.at_level(logging.WARNING):
        response = await post_json(base_url, body)
    assert response.code == 200
    events = sse_events(response.body)
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert not any('"error"' in event for event in events), events
    passed = [orjson.loads(event) for event in events[:-1]]
    if not overrides:
        # With the layer's tools offered, the answer is one (docs/tools.md): one id, tool calls held
        # to the round's end, usage summed into one chunk; odd values are still never an error.
        assert len({chunk.get("id") for chunk in passed}) == 1
    else:
        # Every odd chunk reached the caller as the upstream sent it.
        for chunk in ODD_CHUNKS:
            assert chunk in passed
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    done = [r for r in app.services.hub.snapshot() if r.get("status") == "done"]
    assert done, app.services.hub.snapshot()


@pytest.mark.parametrize("completion", [
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": 5},
                  "finish_reason": 5}], "usage": [1, 2, 3]},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                          "tool_calls": [{"function": {"name": "f", "arguments": 7}}, "x"]},
                  "finish_reason": "tool_calls"}],
     "usage": {"completion_tokens": "many"}},
])
async def test_odd_values_in_a_whole_answer_are_passed_on_not_a_500(base_url, completion, caplog):
    body = {"model": "m", "messages": MESSAGES, "x_fake": {"completion": completion}}
    with caplog.at_level(logging.WARNING):
        response = await post_json(base_url, body)
    assert response.code == 200, response.body
    assert orjson.loads(response.body) == completion
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_the_console_record_bounds_keys_and_tool_call_arguments(base_url, app):
    long_key = "k" * 600_000  # with the rest, under MAX_BODY_BYTES
    tool_deltas = [{"index": 0, "function": {"name": "f" if i == 0 else "", "arguments": "a" * 100}}
                   for i in range(2000)]
    chunks = [{"id": "c", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"tool_calls": tool_deltas[i:i + 100]}}]} for i in range(0, 2000, 100)]
    body = {"model": "m", "messages": MESSAGES, "stream": True, "metadata": {long_key: 1},
            "x_fake": {"extra_chunks": chunks}}
    response = await post_json(base_url, body)
    assert response.code == 200
    record = app.services.hub.snapshot()[-1]
    assert all(len(key) <= 257 for key in record["params"]["metadata"])
    call = record["outcome"]["tool_calls"][0]
    assert call["name"] == "f"
    assert len(call["arguments"]) < 9 * 1024 and call["arguments"].endswith("more characters not kept]")
    # The record stays within its designed bounds (64 KB of messages, 64 KB of parameters, the rest small).
    assert len(orjson.dumps(record)) < 160 * 1024


def test_a_request_of_many_tiny_values_is_kept_within_the_records_bound():
    from services.console.sanitize import MAX_REQUEST_CHARS, sanitize

    event = {"type": "request", "id": "r", "model": "m" * 5000, "messages": [],
             "params": {"a": ["x"] * 200_000, "b": {str(i): i for i in range(200)}}}
    clean = sanitize(event)
    assert len(orjson.dumps(clean["params"])) < 2 * MAX_REQUEST_CHARS
    assert clean["params"]["a"][-1] == f"[{200_000 - 256} more items not kept]"
    assert len(clean["model"]) == 256
