"""A Backend (services/upstream/base.py) whose stream yields the chunk objects it was given, in order:
for driving the tool rounds directly with an upstream shape the fake server does not script."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from services.common.openai_format import Chunk
from services.iss.state import IssState
from services.upstream.base import ToolLog


def chunk(delta: dict[str, Any], finish: str | None = None, *, id: str = "chatcmpl-s", model: str = "m"
          ) -> dict[str, Any]:
    """One streamed chunk of choice 0."""
    return {"id": id, "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class ScriptedBackend:
    """Streams `chunks` for every request; complete() is not scripted."""

    def __init__(self, name: str, chunks: list[dict[str, Any]]) -> None:
        self.name = name
        self.chunks = chunks

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncGenerator[Chunk, None]:
        for item in self.chunks:
            yield Chunk.of(item)

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class NoQueries:
    """The layer's tools are offered, never run: the IssTools' queries."""
