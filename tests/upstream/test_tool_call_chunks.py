"""The caller's calls of a round reach the caller one call per chunk, even when the model sent them
all whole in one delta (Ollama). Pipecat's OpenAILLMService (1.14) reads only the first call of
each delta: several calls in one chunk would lose all but the first."""

from __future__ import annotations

import json

from services.iss.tools import IssTools
from services.upstream.tool_rounds import ToolRounds
from tests.fakes.scripted_backend import NoQueries, ScriptedBackend, chunk

# A model that calls two of the caller's tools, both whole in one delta, without indexes.
CALLS = [{"id": "call_w", "type": "function",
          "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
         {"id": "call_t", "type": "function",
          "function": {"name": "get_time", "arguments": '{"zone": "Europe/Paris"}'}}]
WHOLE_PARALLEL_CALLS = ScriptedBackend("whole-parallel", [
    chunk({"role": "assistant", "content": ""}), chunk({"tool_calls": CALLS}), chunk({}, "tool_calls"),
])


async def test_the_callers_parallel_calls_arrive_one_call_per_chunk():
    rounds = ToolRounds(WHOLE_PARALLEL_CALLS, IssTools(NoQueries(), 1.0), 2)  # type: ignore[arg-type]  # never run
    tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
             for name in ("get_weather", "get_time")]
    params = {"model": "m", "messages": [{"role": "user", "content": "weather and time in Paris?"}],
              "tools": tools, "stream": True}
    chunks = [chunk.data async for chunk in rounds.stream(params, None)]
    per_delta = [choice["delta"]["tool_calls"] for chunk in chunks for choice in chunk.get("choices") or []
                 if choice["delta"].get("tool_calls")]
    assert [len(calls) for calls in per_delta] == [1, 1], chunks
    # What Pipecat builds: the first call of each delta, a new call at each new index.
    built = [(calls[0]["index"], calls[0]["id"], calls[0]["function"]["name"],
              json.loads(calls[0]["function"]["arguments"])) for calls in per_delta]
    assert built == [(0, "call_w", "get_weather", {"location": "Paris"}),
                     (1, "call_t", "get_time", {"zone": "Europe/Paris"})]
