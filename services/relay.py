"""The relay: a backend's chunk payloads in, SSE events out, each one recorded on the exchange.

Plain async code with no HTTP in it: the chat handler writes what it yields, a test can drive it
with any async iterator of payloads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson

from services.errors import upstream_error
from services.exchange import Exchange
from services.openai_format import sse_event
from services.redaction import redact_text


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

    async def events(self, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for payload in payloads:
            yield self.event(payload)
        if not self.payloads:
            raise upstream_error(502, "The upstream LLM ended the stream without sending anything.",
                                 code="upstream_empty")

    def event(self, payload: bytes) -> bytes:
        """One payload read and recorded, as the SSE event to send."""
        self.payloads += 1
        exchange = self.exchange
        try:
            chunk = orjson.loads(payload)
            if chunk.get("error") is not None and not chunk.get("choices"):
                detail = redact_text(_error_message(chunk), self.secrets)
                raise upstream_error(502, f"The upstream LLM failed mid-stream: {detail}", code="upstream_error")
            if exchange.upstream_model is None and isinstance(chunk.get("model"), str):
                exchange.upstream_model = chunk["model"][:200]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                content = delta.get("content")
                tool_calls = delta.get("tool_calls")
                if content or tool_calls:
                    self.content = True
                    exchange.token(content if isinstance(content, str) else "")
                for call in tool_calls or ():
                    exchange.tool_call(call)
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            # Not JSON, or JSON that is not a chunk (a list, a number, choices of strings...).
            raise upstream_error(502, "The upstream LLM sent a malformed chunk.", code="upstream_bad_chunk") from None
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if b"\n" in payload:
            # A multi-line SSE data field: valid JSON may hold raw newlines between tokens only.
            payload = payload.replace(b"\r", b" ").replace(b"\n", b" ")
        return sse_event(payload)


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
    if isinstance(completion.get("model"), str):
        exchange.upstream_model = completion["model"][:200]
    for choice in choices:
        message = choice.get("message", {})
        content = message.get("content")
        exchange.token(content if isinstance(content, str) else "")
        for index, call in enumerate(message.get("tool_calls") or ()):
            exchange.tool_call({"index": index, **call} if isinstance(call, dict) else call)
    return completion


def _error_message(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:300]
    return "unknown error"
