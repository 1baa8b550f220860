"""The built-in offline responder: answers from the ISS data alone, with no language model."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from services.iss.describe import describe_state
from services.iss.queries import IssQueries
from services.iss.state import IssState
from services.openai_format import completion_from_chunks, estimate_tokens, text_chunks

OFFLINE_NOTE = (
    "(Offline demo: no language model is connected, so this answer is built from the ISS data "
    "alone. Set OPENAI_API_KEY, or OPENAI_BASE_URL for a local server, to talk to a real model.)"
)


def answer_text(iss: IssState | None) -> str:
    """What the responder says: the ISS facts it has, and plainly that it is an offline demo."""
    if iss is None:
        facts = "I can't tell where the International Space Station is right now: no position source answered."
    else:
        facts = describe_state(iss)
    return f"{OFFLINE_NOTE} {facts}"


def _prompt_text(messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return " ".join(parts)


class BuiltinResponder:
    """Streams `answer_text` word by word in the same chunk format as an upstream."""

    name = "builtin"

    def __init__(self, queries: IssQueries | None = None) -> None:
        self.queries = queries

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "host": None}

    def _chunks(self, params: dict[str, Any], iss: IssState | None) -> list[dict[str, Any]]:
        text = answer_text(iss)
        options = params.get("stream_options") or {}
        usage = None
        if options.get("include_usage"):
            prompt = estimate_tokens(_prompt_text(params["messages"]))
            completion = estimate_tokens(text)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}
        return list(text_chunks(re.findall(r"\S+\s*", text), params["model"], usage=usage))

    async def stream(self, params: dict[str, Any], iss: IssState | None) -> AsyncIterator[bytes]:
        for item in self._chunks(params, iss):
            yield orjson.dumps(item)
            # Hand the loop back between words, as a real stream would.
            await asyncio.sleep(0)

    async def complete(self, params: dict[str, Any], iss: IssState | None) -> bytes:
        completion = completion_from_chunks(self._chunks({**params, "stream_options": {"include_usage": True}}, iss))
        return orjson.dumps(completion)

    async def close(self) -> None:
        return None
