"""What every chat backend offers. Backends raise services.common.errors.ApiError (type "upstream_error")."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from services.common.openai_format import Chunk
from services.iss.state import IssState


class ToolLog(Protocol):
    """Where a backend records the layer's own tool calls, which the caller never sees: the request's exchange."""

    def layer_tool(self, *, name: str, arguments: str, result: str, ok: bool, ms: float, round: int) -> None: ...


class Backend(Protocol):
    """Streams chat completions; `stream` yields each SSE data payload as a Chunk (parsed at most once)
    and is an async generator: the handler closes it (aclose) to stop the upstream at once."""

    name: str

    def describe(self) -> dict[str, Any]:
        """Where requests go (for /healthz and the console); never includes a key."""
        ...

    def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
               ) -> AsyncGenerator[Chunk, None]: ...

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None) -> bytes: ...

    async def close(self) -> None: ...
