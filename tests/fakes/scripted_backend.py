"""A Backend (services/upstream/base.py) whose stream yields the chunk objects it was given, in order:
for driving the tool rounds directly with an upstream shape the fake server does not script."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from services.common.openai_format import Chunk
from services.iss.state import IssState
from services.upstream.base import ToolLog


def chunk(delta: dict[str, Any], finish: str | None = None, *, id: str = "chatcmpl-s", model: str = "m"
          ) -> dict[str, Any]:
    """One streamed chunk of choice 0."""
    return {"id": id, "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class ScriptedBackend:
    """Streams `chunks` for every request (objects, or raw bytes sent as they are); complete() answers
    `completion` when one is given."""

    def __init__(self, name: str, chunks: list[dict[str, Any] | bytes],
                 completion: dict[str, Any] | None = None) -> None:
        self.name = name
        self.chunks = chunks
        self.completion = completion

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncGenerator[Chunk, None]:
        for item in self.chunks:
            # As an upstream sends them: bytes parsed anew for each request (the layer may rewrite a chunk).
            yield Chunk(item if isinstance(item, bytes) else orjson.dumps(item))

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None) -> bytes:
        if self.completion is None:
            raise NotImplementedError
        return orjson.dumps(self.completion)

    async def close(self) -> None:
        return None


class NoQueries:
    """The layer's tools are offered, never run: the IssTools' queries."""
