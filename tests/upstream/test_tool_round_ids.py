"""One completion id per answer, also when the upstream's first chunk has an empty id (Azure OpenAI's
content-filter chunk), with the layer's tools offered."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.common.errors import ApiError
from services.iss.tools import IssTools
from services.upstream.tool_rounds import ToolRounds
from tests.fakes.scripted_backend import NoQueries, ScriptedBackend, chunk

# An upstream whose stream opens with Azure's `{"id": "", "choices": [], "prompt_filter_results"}`.
AZURE_LIKE = ScriptedBackend("azure-like", [
    {"id": "", "object": "", "created": 0, "model": "", "choices": [],
     "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
    *(chunk(delta, finish, id="chatcmpl-az", model="gpt-4o") for delta, finish in (
        ({"role": "assistant", "content": ""}, None), ({"content": "Hello"}, None), ({}, "stop"))),
])


async def test_an_empty_first_id_does_not_become_the_answers_id():
    rounds = ToolRounds(AZURE_LIKE, IssTools(NoQueries(), 1.0), 2)  # type: ignore[arg-type]  # never called
    params = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    chunks = [chunk.data async for chunk in rounds.stream(params, None)]
    ids = {chunk["id"] for chunk in chunks if chunk.get("choices")}
    assert ids == {"chatcmpl-az"}, chunks


# A model that ignores the tool list: every round, streamed or not, it calls the layer's iss_crew.
_CREW_CALL = {"id": "call_1", "type": "function", "function": {"name": "iss_crew", "arguments": "{}"}}
KEEPS_CALLING_OURS = ScriptedBackend(
    "keeps-calling",
    [chunk({"role": "assistant", "content": ""}, id="chatcmpl-k"),
     chunk({"tool_calls": [{"index": 0, **_CREW_CALL}]}, id="chatcmpl-k"), chunk({}, "tool_calls", id="chatcmpl-k")],
    completion={"id": "chatcmpl-k", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [_CREW_CALL]},
                             "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
)


class Crew:
    """What iss_crew reads: nobody known."""

    def crew(self) -> dict[str, Any]:
        return {"people": [], "note": "unknown"}


async def test_the_layers_tool_called_in_the_round_that_no_longer_offers_it_never_reaches_the_caller():
    rounds = ToolRounds(KEEPS_CALLING_OURS, IssTools(Crew(), 1.0), 1)  # type: ignore[arg-type]  # crew() only
    params = {"model": "m", "messages": [{"role": "user", "content": "who is aboard?"}], "stream": True}
    chunks = [chunk.data async for chunk in rounds.stream(params, None)]
    deltas = [choice["delta"] for chunk in chunks for choice in chunk.get("choices") or []]
    assert not [delta for delta in deltas if delta.get("tool_calls")], chunks
    finishes = [choice["finish_reason"] for chunk in chunks for choice in chunk.get("choices") or []
                if choice.get("finish_reason")]
    assert finishes == ["stop"], chunks
    whole = orjson.loads(await rounds.complete({**params, "stream": False}, None))
    assert "tool_calls" not in whole["choices"][0]["message"], whole
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert whole["usage"]["total_tokens"] == 12  # both rounds


# An upstream whose finish chunk (which the layer rewrites) carries a value nested 300 deep.
TOO_DEEP = ScriptedBackend("too-deep", [
    b'{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": '
    b'[{"index": 0, "delta": {"content": "Hi"}, "logprobs": ' + b'{"x": ' * 300 + b"1" + b"}" * 300
    + b', "finish_reason": "stop"}]}',
])


async def test_an_upstream_chunk_too_deep_to_write_again_is_the_upstreams_502():
    rounds = ToolRounds(TOO_DEEP, IssTools(Crew(), 1.0), 1)  # type: ignore[arg-type]  # crew() only
    params = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with pytest.raises(ApiError) as raised:
        [chunk async for chunk in rounds.stream(params, None)]
    assert (raised.value.status, raised.value.code) == (502, "upstream_bad_chunk")
