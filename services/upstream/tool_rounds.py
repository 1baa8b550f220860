"""Tool rounds: the layer's own tools offered to the upstream model, run here, the answer continued.

A backend around the upstream. Each round streams the upstream's chunks to the caller as they come,
byte for byte, except the layer's own tool calls (absorbed); once a round has called a layer tool,
its finish (and any caller call after the layer's) stays here. Such a round runs the layer's calls
(bounded in time), adds the assistant's calls and the tool results to the conversation and asks
again; the caller sees one answer. A round that called only the caller's tools hands them on
unchanged. A round that called both runs the layer's and asks again without the caller's calls: the
model, now with the layer's results, calls the caller's tool again if it still needs it. (A caller
call streamed before the first layer call of its round has already reached the caller.) An
upstream that refuses `tools` gets the request again without the layer's, once, and when that works
is not offered them for a while.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.errors import ApiError, tool_round_error
from services.common.openai_format import NOT_JSON, Chunk
from services.iss.state import IssState
from services.iss.tools import IssTools, ToolResult
from services.upstream.base import Backend, ToolLog

log = logging.getLogger("iss_llm.tools")

REFUSAL_HOLD_S = 600.0


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _Round:
    """One upstream answer read chunk by chunk: what goes to the caller now, what waits, what is ours."""

    def __init__(self, ours: frozenset[str], later_round: bool, earlier_usage: dict[str, int]) -> None:
        self.ours = ours
        self.later_round = later_round
        self.earlier_usage = earlier_usage  # what earlier rounds used, added into this round's usage
        self.payloads = 0
        self.text: list[str] = []
        self.layer: dict[int, _Call] = {}
        self.kind_of: dict[int, str] = {}
        self.dropped = 0  # caller tool-call deltas left out of a round that also called the layer's
        self.usage: Any = None
        self.finished = False

    def take(self, payload: Chunk) -> Chunk | None:
        """The payload to send on now (as is, or rewritten), or None when it is the layer's alone.

        Chunks without a layer call pass byte for byte. Once a layer call appears in a round, the
        caller's calls of that round and its finish are left out: the round continues here.
        """
        self.payloads += 1
        chunk = payload.data
        if chunk is NOT_JSON:
            return None if self.layer else payload  # the relay reports it
        if self.finished and self.layer:
            if isinstance(chunk, dict) and chunk.get("usage") is not None:
                self.usage = chunk.get("usage")
            return None
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
            return payload  # not a chunk: the relay reports it
        if not choices and chunk.get("usage") is not None:
            return self._final_usage(chunk, payload)
        changed = False
        for choice in choices:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                self.text.append(delta["content"])
            if self.later_round and "role" in delta:
                delta.pop("role")
                changed = True
            calls = delta.get("tool_calls")
            if isinstance(calls, list) and calls:
                absorbed = [self._absorb(call) for call in calls]
                if any(absorbed) or self.layer:
                    self.dropped += sum(1 for taken in absorbed if not taken)
                    delta.pop("tool_calls")
                    changed = True
            if choice.get("finish_reason"):
                self.finished = True
        if self.finished and self.layer:
            return None
        if not changed:
            return payload
        if all(not choice.get("delta") for choice in choices) and not self.finished:
            return None  # nothing left for the caller in this chunk
        return Chunk.of(chunk)

    def _final_usage(self, chunk: dict[str, Any], payload: Chunk) -> Chunk:
        """The last round's usage chunk: as sent, or with the earlier rounds' tokens added in."""
        usage = chunk.get("usage")
        if not self.earlier_usage or not isinstance(usage, dict):
            return payload
        total = dict(self.earlier_usage)
        _add_usage(total, usage)
        return Chunk.of({**chunk, "usage": {**usage, **total}})

    def _absorb(self, call: Any) -> bool:
        """Whether a tool-call delta is the layer's own (kept here) rather than the caller's."""
        if not isinstance(call, dict) or not isinstance(call.get("index", 0), int):
            return False
        index = call.get("index", 0)
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        if index not in self.kind_of:
            self.kind_of[index] = "layer" if function.get("name") in self.ours else "caller"
        if self.kind_of[index] != "layer":
            return False
        record = self.layer.setdefault(index, _Call())
        if isinstance(call.get("id"), str):
            record.id = call["id"]
        if isinstance(function.get("name"), str):
            record.name = function["name"]
        if isinstance(function.get("arguments"), str):
            record.arguments.append(function["arguments"])
        return True


@dataclass
class ToolStatus:
    """What /healthz says about the layer's tools."""

    calls: int = 0
    failures: int = 0
    refusals: int = 0
    refused_until: float = 0.0
    last_refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        paused = max(0.0, self.refused_until - time.monotonic())
        return {
            "calls": self.calls, "failures": self.failures, "refusals": self.refusals,
            "paused_for_seconds": round(paused, 1), "last_refusal": self.last_refusal,
        }


class ToolRounds:
    """A Backend: the inner upstream, with the layer's tools offered and run (at most `max_rounds`)."""

    def __init__(self, inner: Backend, tools: IssTools, max_rounds: int = 3) -> None:
        self.inner = inner
        self.tools = tools
        self.max_rounds = max_rounds
        self.status = ToolStatus()
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # list_models and whatever else the upstream offers

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "iss_tools": self.status.to_dict()}

    async def close(self) -> None:
        await self.inner.close()

    def _offer(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if params.get("tool_choice") == "none" or time.monotonic() < self.status.refused_until:
            return []
        theirs = params.get("tools")
        taken = {tool.get("function", {}).get("name") for tool in theirs or () if isinstance(tool, dict)}
        return self.tools.definitions({name for name in taken if isinstance(name, str)})

    def _with_tools(self, params: dict[str, Any], messages: list[dict[str, Any]], ours: list[dict[str, Any]]) -> dict:
        request = {**params, "messages": messages}
        if ours:
            request["tools"] = [*(params.get("tools") or ()), *ours]
        return request

    def _refused(self, error: ApiError) -> None:
        self.status.refusals += 1
        self.status.refused_until = time.monotonic() + REFUSAL_HOLD_S
        self.status.last_refusal = error.message[:300]
        log.warning("the upstream refused the layer's tools (%s): asking again without them, and not offering "
                    "them for %.0f s", error.message[:200], REFUSAL_HOLD_S)

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncGenerator[Chunk, None]:
        ours = self._offer(params)
        if not ours:
            async for payload in self.inner.stream(params, iss):
                yield payload
            return
        names = frozenset(tool["function"]["name"] for tool in ours)
        messages = list(params["messages"])
        usage: dict[str, int] = {}
        for index in range(self.max_rounds + 1):
            offer = ours if index < self.max_rounds else []
            state = _Round(names if offer else frozenset(), later_round=index > 0, earlier_usage=usage)
            try:
                async for payload in self.inner.stream(self._with_tools(params, messages, offer), iss):
                    out = state.take(payload)
                    if out is not None:
                        yield out
            except ApiError as error:
                if index == 0 and state.payloads == 0 and error.status == 400:
                    # Ask again without the layer's tools; only if that works were they the problem
                    # (a caller's own bad parameter fails again, and stays the caller's error).
                    refusal: ApiError | None = error
                    async for payload in self.inner.stream(params, iss):
                        if refusal is not None:
                            self._refused(refusal)
                            refusal = None
                        yield payload
                    return
                raise error if index == 0 else tool_round_error(error) from None
            if not state.layer:
                return
            _add_usage(usage, state.usage)
            messages = [*messages, *await self._run(state, index, tools)]

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                       ) -> bytes:
        ours = self._offer(params)
        if not ours:
            return await self.inner.complete(params, iss)
        names = frozenset(tool["function"]["name"] for tool in ours)
        messages = list(params["messages"])
        for index in range(self.max_rounds + 1):
            offer = ours if index < self.max_rounds else []
            try:
                body = await self.inner.complete(self._with_tools(params, messages, offer), iss)
            except ApiError as error:
                if index == 0 and error.status == 400:
                    body = await self.inner.complete(params, iss)  # a caller's own fault fails again here
                    self._refused(error)
                    return body
                raise error if index == 0 else tool_round_error(error) from None
            state = _Round(names if offer else frozenset(), later_round=False, earlier_usage={})
            try:
                completion = orjson.loads(body)
                message = completion["choices"][0]["message"]
                calls = message.get("tool_calls") or []
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
                return body  # the handler reports an answer it cannot read
            for position, call in enumerate(calls if isinstance(calls, list) else ()):
                if isinstance(call, dict):
                    state._absorb({**call, "index": position})
            if not state.layer:
                return body
            if isinstance(message.get("content"), str):
                state.text.append(message["content"])
            messages = [*messages, *await self._run(state, index, tools)]
        return body

    async def _run(self, state: _Round, round_index: int, record: ToolLog | None) -> list[dict[str, Any]]:
        """Run the round's layer calls at once; the assistant message and the tool messages to add."""
        calls = [state.layer[index] for index in sorted(state.layer)]
        for position, call in enumerate(calls):
            call.id = call.id or f"call_iss_{round_index}_{position}"
        results: list[ToolResult] = await asyncio.gather(
            *(self.tools.run(call.name, "".join(call.arguments)) for call in calls)
        )
        for result in results:
            self.status.calls += 1
            if not result.ok:
                self.status.failures += 1
            log.info("tool %s(%s) -> %s in %.1f ms", result.name, result.arguments[:200],
                     "ok" if result.ok else result.content[:200], result.ms)
            if record is not None:
                record.layer_tool(name=result.name, arguments=result.arguments, result=result.content,
                                    ok=result.ok, ms=result.ms, round=round_index)
        assistant = {
            "role": "assistant",
            "content": "".join(state.text) or None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.name,
                                                                 "arguments": "".join(call.arguments)}}
                for call in calls
            ],
        }
        return [assistant, *({"role": "tool", "tool_call_id": call.id, "content": result.content}
                             for call, result in zip(calls, results, strict=True))]


def _add_usage(total: dict[str, int], usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
