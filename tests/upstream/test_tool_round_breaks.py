"""The layer's tool rounds as the caller sees them: tool names sent upstream are unique (the caller's
own tool wins a clash of names). (The usage of every round summed: tests/upstream/test_tool_turns.py.)"""

from __future__ import annotations

import orjson

from tests.conftest import post_json, sse_events

QUESTION = [{"role": "user", "content": "When can I see the ISS from Paris?"}]


def _chunks(body: bytes) -> list[dict]:
    return [orjson.loads(data) for data in sse_events(body) if data != "[DONE]"]


async def test_a_caller_tool_named_like_a_layer_tool_is_the_callers_and_names_sent_upstream_are_unique(
        base_url, upstream, app):
    upstream.scripted_tools = True
    theirs = {"type": "function", "function": {"name": "iss_passes", "description": "The caller's own lookup.",
                                               "parameters": {"type": "object", "properties": {}}}}
    response = await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True, "tools": [theirs]})
    assert response.code == 200
    sent = upstream.bodies[-1]
    names = [tool["function"]["name"] for tool in sent["tools"]]
    assert len(names) == len(set(names)), names
    assert theirs in sent["tools"]  # the caller's definition, not the layer's
    # The model called iss_passes: the caller's tool, so the call is the caller's to run.
    chunks = _chunks(response.body)
    calls = [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert [call["function"]["name"] for call in calls if call.get("function", {}).get("name")] == ["iss_passes"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert upstream.requests == 1  # no layer round ran
    assert app.services.backend.describe()["iss_tools"]["calls"] == 0

