"""The relay: a backend's chunk payloads in, SSE events out, each one recorded on the exchange.

Plain async code with no HTTP in it: the chat handler writes what it yields, a test can drive it
with any async iterator of payloads.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import orjson

from services.chat.exchange import Exchange
from services.common.errors import upstream_error
from services.common.openai_format import MAX_MODEL_CHARS, Chunk, choices_ok, is_count, sse_event
from services.ops.redaction import redact_text


class Relay:
    """Forwards every payload byte for byte as an SSE event; remembers finish reason and usage.

    `events()` raises ApiError for an upstream that fails mid-stream (an error event, a chunk
    that is not JSON or not a chunk) or that ends without sending anything.
    """

    def __init__(self, exchange: Exchange, secrets: Iterable[str | None] = ()) -> None:
        self.exchange = exchange
        self.secrets = tuple(secrets)
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.payloads = 0
        self.content = False  # a content token or tool call came (a role chunk alone does not count)
        self.first: dict[str, Any] | None = None  # the first chunk's id, model and created

    async def events(self, payloads: AsyncIterator[Chunk]) -> AsyncGenerator[bytes, None]:
        async for payload in payloads:
            yield self.event(payload)
        if not self.payloads:
            raise upstream_error(502, "The upstream LLM ended the stream without sending anything.",
                                 code="upstream_empty")

    def event(self, payload: Chunk) -> bytes:
        """One payload read and recorded, as the SSE event to send.

        A payload that is not a JSON object, or whose `choices` is not a list of objects, is an
        upstream failure (502). Anything else goes to the caller as the upstream sent it; what the
        record takes from it (content, tool calls, finish reason, usage, model) is type-checked and
        bounded, and a value of the wrong type is left out of the record, never an error.
        """
        self.payloads += 1
        exchange = self.exchange
        chunk = payload.data
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(chunk, dict) or not choices_ok(choices):
            # Not JSON, or JSON that is not a chunk (a list, a number, choices of strings...).
            raise upstream_error(502, "The upstream LLM sent a malformed chunk.", code="upstream_bad_chunk")
        if chunk.get("error") is not None and not choices:
            detail = redact_text(_error_message(chunk), self.secrets)
            raise upstream_error(502, f"The upstream LLM failed mid-stream: {detail}", code="upstream_error")
        if self.first is None:
            self.first = _identity(chunk)
            exchange.answered_by(self.first["model"])
        for choice in choices or ():
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                tool_calls = delta.get("tool_calls")
                if not isinstance(tool_calls, list):
                    tool_calls = None
                if (isinstance(content, str) and content) or tool_calls:
                    self.content = True
                    exchange.token(content if isinstance(content, str) else "")
                for call in tool_calls or ():
                    exchange.tool_call(call)
            reason = choice.get("finish_reason")
            if reason is not None:  # most chunks carry null: no call for them
                self.finish_reason = record_finish_reason(reason) or self.finish_reason
        usage = chunk.get("usage")
        if usage is not None:
            usage = record_usage(usage)
            if usage:
                self.usage = usage
        raw = payload.raw
        if b"\n" in raw:
            # A multi-line SSE data field: valid JSON may hold raw newlines between tokens only.
            raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
        return sse_event(raw)


MAX_FINISH_REASON = 64
MAX_USAGE_KEYS = 32


def record_finish_reason(value: Any) -> str | None:
    """A finish reason as the record keeps it: a short string, else nothing."""
    return value[:MAX_FINISH_REASON] if isinstance(value, str) and value else None


def record_usage(value: Any) -> dict[str, Any] | None:
    """Usage as the record keeps it: short names with whole-number counts (one level of details,
    such as prompt_tokens_details), at most MAX_USAGE_KEYS of each; else nothing."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {}
    for key, item in list(value.items())[:MAX_USAGE_KEYS]:
        if not isinstance(key, str) or len(key) > 64:
            continue
        if is_count(item):
            out[key] = item
        elif isinstance(item, dict):
            details = {k: v for k, v in list(item.items())[:MAX_USAGE_KEYS]
                       if isinstance(k, str) and len(k) <= 64 and is_count(v)}
            if details:
                out[key] = details
    return out or None


def read_completion(body: bytes, exchange: Exchange) -> dict[str, Any]:
    """A whole (non-streamed) answer, checked to be a chat.completion and recorded on the exchange."""
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError:
        completion = None
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not all(
        isinstance(choice, dict) and isinstance(choice.get("message", {}), dict) for choice in choices
    ):
        raise upstream_error(502, "The upstream LLM sent an answer this server could not read.",
                             code="upstream_bad_response")
    assert isinstance(completion, dict)
    exchange.answered_by(completion.get("model"))
    for choice in choices:
        message = choice.get("message", {})
        content = message.get("content")
        exchange.token(content if isinstance(content, str) else "")
        tool_calls = message.get("tool_calls")
        for index, call in enumerate(tool_calls if isinstance(tool_calls, list) else ()):
            if isinstance(call, dict):
                exchange.tool_call({**call, "index": index})
    return completion


def _identity(chunk: dict[str, Any]) -> dict[str, Any]:
    """The id, model and creation time of a completion, as its chunks carry them (bounded, typed)."""
    model, cid, created = chunk.get("model"), chunk.get("id"), chunk.get("created")
    return {
        "id": cid[:200] if isinstance(cid, str) else "chatcmpl-unknown",
        "model": model[:MAX_MODEL_CHARS] if isinstance(model, str) else None,
        "created": created if isinstance(created, int) and not isinstance(created, bool) else 0,
    }


def _error_message(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:300]
    return "unknown error"
