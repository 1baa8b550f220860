"""Tool rounds: the layer's own tools offered to the upstream model, run here, the answer continued.

A backend around the upstream. Content streams to the caller as it comes (byte for byte in the
first round); the tool calls of a round are held until the round ends (tool calls are never
spoken, so holding them costs a voice agent nothing), whatever the order and chunking the model
used. At the round's end:

- it called one of the layer's tools: the layer runs them (at most `max_calls`, bounded in time
  and in result bytes), drops the caller's calls of that round, and asks again with the results
  (the model calls the caller's tool again if it still needs it);
- else: the caller's calls go out once, renumbered from 0, one id each, then the finish
  (`tool_calls` when there is a call).

The caller sees one answer: one completion id on every chunk of every round, the role chunk
once, one usage chunk at the end with every round's tokens summed (whatever the shape of the
upstream's usage chunks). Not streamed, the same rounds; the usage of the answer is the sum.

An upstream model that refuses `tools` (a 400 the same request without the layer's tools does not
get) is asked again without them, and is not offered them for a while; other models still are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.errors import ApiError, tool_round_error
from services.common.openai_format import NOT_JSON, Chunk, choices_ok, is_count
from services.iss.state import IssState
from services.iss.tools import IssTools, ToolResult
from services.upstream.base import Backend, ToolLog

log = logging.getLogger("iss_llm.tools")

REFUSAL_HOLD_S = 600.0
MAX_PAUSED_MODELS = 64  # models remembered as refusing tools (the oldest pause is forgotten past it)
MAX_HELD_CALLS = 128  # tool calls held per round; past it a call is left out (and logged)
MAX_NAME_CHARS = 256
UNRUN_ARGUMENTS_CHARS = 200  # arguments of a call not run, as echoed back upstream


@dataclass
class _Call:
    id: str = ""
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    @property
    def function(self) -> str:
        return "".join(self.name)[:MAX_NAME_CHARS]


class _Calls:
    """A round's tool calls folded from their deltas, however the model chunked and numbered them.

    A delta goes to the call its `index` names; a delta whose index is missing, or whose id differs
    from the id of the call at that index (servers that number every call 0), starts a new call
    when it carries an id or a name, else continues the last one.
    """

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self._at: dict[int, _Call] = {}
        self.left_out = 0

    def add(self, delta: Any) -> None:
        if not isinstance(delta, dict):
            return
        index = delta.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else None
        call_id = delta.get("id")
        call_id = call_id if isinstance(call_id, str) else ""
        function = delta.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        name = name if isinstance(name, str) else ""
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a server that sends the object itself
            arguments = orjson.dumps(arguments).decode()
        call = self._at.get(index) if index is not None else (self.calls[-1] if self.calls else None)
        starts = call is None or bool(call_id and call.id and call_id != call.id) or (
            index is None and bool(call_id or name) and bool(call.name))
        if starts:
            if len(self.calls) >= MAX_HELD_CALLS:
                self.left_out += 1
                return
            call = _Call()
            self.calls.append(call)
            if index is not None:
                self._at[index] = call
        assert call is not None
        if call_id and not call.id:
            call.id = call_id[:MAX_NAME_CHARS]
        if name and not call.arguments and "".join(call.name) != name:
            call.name.append(name)  # a name in pieces, not one repeated on every delta
        if isinstance(arguments, str):
            call.arguments.append(arguments)


class _Round:
    """One upstream answer read chunk by chunk: what goes to the caller now, and what is held."""

    def __init__(self, answer: _Answer, later: bool) -> None:
        self.answer = answer
        self.later = later
        self.payloads = 0
        self.text: list[str] = []
        self.calls = _Calls()
        self.finish_reason: str | None = None
        self.template: dict[str, Any] | None = None  # the last chunk's fields, for the chunks made here
        self.usage: dict[str, Any] | None = None

    def take(self, payload: Chunk) -> Chunk | None:
        """The payload to send on now (as is, or rewritten), or None when nothing of it is for now."""
        self.payloads += 1
        chunk = payload.data
        if chunk is NOT_JSON or not isinstance(chunk, dict):
            return payload  # the relay reports it
        choices = chunk.get("choices")
        if not choices_ok(choices):
            return payload  # not a chunk: the relay reports it
        if choices is None and chunk.get("usage") is None:
            return payload  # an error event, or something else the relay judges
        changed = self.answer.identify(chunk)
        self.template = chunk
        usage = chunk.get("usage")
        if usage is not None:
            # The last usage of a round counts (some servers repeat a running total on every chunk).
            self.usage = usage if isinstance(usage, dict) else None
            chunk.pop("usage")
            changed = True
        keep = False
        for choice in choices or ():
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    self.text.append(delta["content"])
                if "role" in delta and (self.later or self.answer.role_sent):
                    delta.pop("role")
                    changed = True
                elif "role" in delta:
                    self.answer.role_sent = True
                calls = delta.pop("tool_calls", None)
                if calls is not None:
                    changed = True
                    for call in calls if isinstance(calls, list) else ():
                        self.calls.add(call)
                if delta:
                    keep = True
            reason = choice.get("finish_reason")
            if reason is not None:
                if isinstance(reason, str) and reason:
                    self.finish_reason = reason[:64]
                choice["finish_reason"] = None
                changed = True
            if not keep and _more_than_delta(choice):
                keep = True  # logprobs and the like go on with their chunk
        if not changed:
            return payload
        if not keep:
            return None
        return Chunk.of(chunk)


_CHOICE_FIELDS = frozenset({"index", "delta", "finish_reason"})


def _more_than_delta(choice: dict[str, Any]) -> bool:
    """Whether a choice carries a field other than its index, delta and finish reason (logprobs...)."""
    for key, value in choice.items():
        if value is not None and key not in _CHOICE_FIELDS:
            return True
    return False


class _Answer:
    """What the chunks of every round of one answer share: its id, the role chunk, the usage."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.role_sent = False
        self.usage: dict[str, Any] = {}
        self.usage_seen = False

    def identify(self, chunk: dict[str, Any]) -> bool:
        """Give the chunk the answer's id (the first round's first); whether it changed."""
        chunk_id = chunk.get("id")
        if self.id is None:
            if not (isinstance(chunk_id, str) and chunk_id):
                return False  # no id yet (Azure's first chunk has ""): the first real one is the answer's
            self.id = chunk_id
        if chunk_id != self.id:
            chunk["id"] = self.id
            return True
        return False

    def add_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage_seen = True
            add_usage(self.usage, usage)

    def made(self, template: dict[str, Any] | None, **fields: Any) -> Chunk:
        """A chunk made here, with the answer's id and the upstream's other fields."""
        base = {key: value for key, value in (template or {}).items() if key not in {"choices", "usage"}}
        base.setdefault("object", "chat.completion.chunk")
        if self.id is None:
            self.id = f"chatcmpl-{uuid.uuid4().hex}"  # the upstream gave none: one of ours, for every chunk
        base["id"] = self.id
        return Chunk.of({**base, **fields})


def _caller_calls(calls: list[_Call]) -> list[dict[str, Any]]:
    """The caller's calls of a round as whole calls: indexes from 0, one id each, JSON arguments."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for call in calls:
        if not call.function:
            continue  # a call without a name is nothing a caller could run
        call_id = call.id if call.id and call.id not in seen else f"call_{uuid.uuid4().hex[:24]}"
        seen.add(call_id)
        out.append({"index": len(out), "id": call_id, "type": "function",
                    "function": {"name": call.function, "arguments": "".join(call.arguments) or "{}"}})
    return out


@dataclass
class ToolStatus:
    """What /healthz says about the layer's tools."""

    calls: int = 0
    failures: int = 0
    refusals: int = 0
    not_run: int = 0  # calls past ISS_TOOL_MAX_CALLS or the result budget
    last_refusal: str | None = None
    paused: dict[str, float] = field(default_factory=dict)  # upstream model -> monotonic time the pause ends

    def paused_for(self, model: str) -> float:
        until = self.paused.get(model)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self.paused[model]
            return 0.0
        return left

    def pause(self, model: str, seconds: float) -> None:
        self.paused.pop(model, None)
        self.paused[model] = time.monotonic() + seconds
        while len(self.paused) > MAX_PAUSED_MODELS:
            del self.paused[next(iter(self.paused))]

    def to_dict(self) -> dict[str, Any]:
        now = time.monotonic()
        paused = {model: round(until - now, 1) for model, until in self.paused.items() if until > now}
        return {
            "calls": self.calls, "failures": self.failures, "not_run": self.not_run,
            "refusals": self.refusals, "last_refusal": self.last_refusal,
            "paused_models": [{"model": model, "seconds_left": left} for model, left in paused.items()],
        }


class _Budget:
    """The bytes of tool results one request may still send upstream."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = size


class ToolRounds:
    """A Backend: the inner upstream, with the layer's tools offered and run (at most `max_rounds`)."""

    def __init__(self, inner: Backend, tools: IssTools, max_rounds: int = 3, *, max_calls: int = 4,
                 result_bytes: int = 64 * 1024) -> None:
        self.inner = inner
        self.tools = tools
        self.max_rounds = max_rounds
        self.max_calls = max_calls
        self.result_bytes = result_bytes
        self.status = ToolStatus()
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # list_models and whatever else the upstream offers

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "iss_tools": self.status.to_dict()}

    async def close(self) -> None:
        await self.inner.close()

    def _offer(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The layer's tools for this request: none when the caller said none or this model refused them."""
        if params.get("tool_choice") == "none" or self.status.paused_for(_model(params)) > 0:
            return []
        theirs = params.get("tools")
        taken: set[str] = set()
        for tool in theirs if isinstance(theirs, list) else ():
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str):
                taken.add(name)
        return self.tools.definitions(taken)

    def _with_tools(self, params: dict[str, Any], messages: list[dict[str, Any]], ours: list[dict[str, Any]]) -> dict:
        request = {**params, "messages": messages}
        if ours:
            theirs = params.get("tools")
            request["tools"] = [*(theirs if isinstance(theirs, list) else ()), *ours]
        return request

    def _refused(self, params: dict[str, Any], error: ApiError) -> None:
        model = _model(params)
        self.status.refusals += 1
        self.status.pause(model, REFUSAL_HOLD_S)
        self.status.last_refusal = error.message[:300]
        log.warning("the upstream model %r refused the layer's tools (%s): asking again without them, and not "
                    "offering them to that model for %.0f s", model[:64], error.message[:200], REFUSAL_HOLD_S)

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncGenerator[Chunk, None]:
        ours = self._offer(params)
        if not ours:
            async with contextlib.aclosing(self.inner.stream(params, iss)) as upstream:
                async for payload in upstream:
                    yield payload
            return
        names = frozenset(tool["function"]["name"] for tool in ours)
        messages = list(params["messages"])
        answer = _Answer()
        budget = _Budget(self.result_bytes)
        for index in range(self.max_rounds + 1):
            offer = ours if index < self.max_rounds else []
            state = _Round(answer, later=index > 0)
            try:
                # Closed at once, not by the collector, when the caller's side closes this stream.
                async with contextlib.aclosing(self.inner.stream(self._with_tools(params, messages, offer), iss)) \
                        as upstream:
                    async for payload in upstream:
                        out = state.take(payload)
                        if out is not None:
                            yield out
            except ApiError as error:
                if index == 0 and state.payloads == 0 and error.status == 400:
                    # Ask again without the layer's tools; only if that works were they the problem
                    # (a caller's own bad parameter fails again, and stays the caller's error).
                    refusal: ApiError | None = error
                    async with contextlib.aclosing(self.inner.stream(params, iss)) as again:
                        async for payload in again:
                            if refusal is not None:
                                self._refused(params, refusal)
                                refusal = None
                            yield payload
                    return
                raise error if index == 0 else tool_round_error(error) from None
            answer.add_usage(state.usage)
            if state.calls.left_out:
                log.warning("a round called more than %d tools: %d calls left out", MAX_HELD_CALLS,
                            state.calls.left_out)
            layer = [call for call in state.calls.calls if offer and call.function in names]
            if layer and index < self.max_rounds:
                messages = [*messages, *await self._run(state, layer, index, tools, budget)]
                continue
            if state.payloads == 0 and index == 0:
                return  # the relay reports an upstream that sent nothing
            for chunk in self._round_end(state, answer, names):
                yield chunk
            return

    def _round_end(self, state: _Round, answer: _Answer, ours: frozenset[str]) -> list[Chunk]:
        """The last round's held parts: the caller's calls (once), the finish, the usage of every round.
        A call of the layer's own tools is never the caller's, even in the round that no longer offers
        them (a model that ignores the tool list calls them again): it is dropped."""
        out: list[Chunk] = []
        calls = _caller_calls([call for call in state.calls.calls if call.function not in ours])
        template = state.template
        if calls:
            out.extend(answer.made(template, choices=[{"index": 0, "delta": {"tool_calls": [call]},
                                                       "finish_reason": None}]) for call in calls)
        reason = "tool_calls" if calls else state.finish_reason
        if reason == "tool_calls" and not calls:
            reason = "stop"
        if reason is not None:
            out.append(answer.made(template, choices=[{"index": 0, "delta": {}, "finish_reason": reason}]))
        if answer.usage_seen:
            out.append(answer.made(template, choices=[], usage=answer.usage))
        return out

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                       ) -> bytes:
        ours = self._offer(params)
        if not ours:
            return await self.inner.complete(params, iss)
        names = frozenset(tool["function"]["name"] for tool in ours)
        messages = list(params["messages"])
        usage: dict[str, Any] = {}
        budget = _Budget(self.result_bytes)
        for index in range(self.max_rounds + 1):
            offer = ours if index < self.max_rounds else []
            try:
                body = await self.inner.complete(self._with_tools(params, messages, offer), iss)
            except ApiError as error:
                if index == 0 and error.status == 400:
                    body = await self.inner.complete(params, iss)  # a caller's own fault fails again here
                    self._refused(params, error)
                    return body
                raise error if index == 0 else tool_round_error(error) from None
            try:
                completion = orjson.loads(body)
                message = completion["choices"][0]["message"]
                calls = message.get("tool_calls") or []
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
                return body  # the handler reports an answer it cannot read
            add_usage(usage, completion.get("usage"))
            state = _Round(_Answer(), later=False)
            for position, call in enumerate(calls if isinstance(calls, list) else ()):
                if isinstance(call, dict):
                    state.calls.add({**call, "index": position})
            layer = [call for call in state.calls.calls if offer and call.function in names]
            if not layer:
                ours_called = not offer and any(call.function in names for call in state.calls.calls)
                if ours_called:  # the round that no longer offers them: the layer's calls never reach the caller
                    completion = _without_calls_of(completion, names)
                if (index == 0 or not usage) and not ours_called:
                    return body
                return orjson.dumps({**completion, "usage": usage or completion.get("usage")})  # every round's tokens
            if isinstance(message.get("content"), str):
                state.text.append(message["content"])
            messages = [*messages, *await self._run(state, layer, index, tools, budget)]
        return body

    async def _run(self, state: _Round, layer: list[_Call], round_index: int, record: ToolLog | None,
                   budget: _Budget) -> list[dict[str, Any]]:
        """Run the round's layer calls at once (at most `max_calls`); the assistant message and the
        tool messages to add. Calls past the limit, or past the request's result budget, get an
        error result the model reads."""
        for position, call in enumerate(layer):
            call.id = call.id or f"call_iss_{round_index}_{position}"
        run, unrun = layer[:self.max_calls], layer[self.max_calls:]
        results: list[ToolResult] = list(await asyncio.gather(
            *(self.tools.run(call.function, "".join(call.arguments)) for call in run)
        ))
        contents: list[str] = []
        for result in results:
            self.status.calls += 1
            content = result.content
            if len(content.encode()) > budget.left:
                content = orjson.dumps({"error": f"not sent: this request's tool results passed "
                                                 f"{budget.size} bytes (ISS_TOOL_RESULT_BYTES)"}).decode()
                self.status.not_run += 1
            budget.left = max(0, budget.left - len(content.encode()))
            ok = result.ok and content is result.content
            if not ok:
                self.status.failures += 1
            contents.append(content)
            log.info("tool %s(%s) -> %s in %.1f ms", result.name, result.arguments[:200],
                     "ok" if ok else content[:200], result.ms)
            if record is not None:
                record.layer_tool(name=result.name, arguments=result.arguments, result=content,
                                  ok=ok, ms=result.ms, round=round_index)
        if unrun:
            self.status.not_run += len(unrun)
            log.warning("round %d: the model called %d of the layer's tools; %d run (ISS_TOOL_MAX_CALLS), "
                        "the rest answered with an error", round_index, len(layer), self.max_calls)
            refusal = orjson.dumps({"error": f"not run: at most {self.max_calls} of these tool calls run per "
                                             "turn; ask again for the rest"}).decode()
            contents.extend(refusal for _ in unrun)
            for call in unrun:
                arguments = "".join(call.arguments)
                call.arguments = [arguments if len(arguments) <= UNRUN_ARGUMENTS_CHARS else "{}"]
        calls = [*run, *unrun]
        assistant = {
            "role": "assistant",
            "content": "".join(state.text) or None,
            "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function, "arguments": "".join(call.arguments) or "{}"}}
                for call in calls
            ],
        }
        return [assistant, *({"role": "tool", "tool_call_id": call.id, "content": content}
                             for call, content in zip(calls, contents, strict=True))]


def _model(params: dict[str, Any]) -> str:
    model = params.get("model")
    return model[:256] if isinstance(model, str) else ""


def add_usage(total: dict[str, Any], usage: Any) -> None:
    """Add one round's usage into the total: whole-number counts, and one level of details
    (prompt_tokens_details and the like)."""
    if not isinstance(usage, dict):
        return
    for key, value in list(usage.items())[:32]:
        if not isinstance(key, str):
            continue
        if is_count(value):
            previous = total.get(key, 0)
            total[key] = (previous if is_count(previous) else 0) + value
        elif isinstance(value, dict):
            details = total.get(key)
            if not isinstance(details, dict):
                details = total[key] = {}
            for name, count in list(value.items())[:32]:
                if isinstance(name, str) and is_count(count):
                    previous = details.get(name, 0)
                    details[name] = (previous if is_count(previous) else 0) + count


def _without_calls_of(completion: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """A whole answer without the calls of `names` in its first choice (its finish "stop" if none is left)."""
    choice = completion["choices"][0]
    message = dict(choice["message"])
    kept = [call for call in message.get("tool_calls") or []
            if not (isinstance(call, dict) and isinstance(call.get("function"), dict)
                    and call["function"].get("name") in names)]
    if kept:
        message["tool_calls"] = kept
    else:
        message.pop("tool_calls", None)
    finish = choice.get("finish_reason")
    if not kept and finish == "tool_calls":
        finish = "stop"
    return {**completion, "choices": [{**choice, "message": message, "finish_reason": finish},
                                      *completion["choices"][1:]]}
