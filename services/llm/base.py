"""What every chat backend offers, and the one error type they raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from services.iss.state import IssState


class UpstreamError(Exception):
    """The backend failed; `status` and `code` say how, `message` is safe to show the caller."""

    def __init__(self, status: int, message: str, *, code: str, type: str = "upstream_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type


class Backend(Protocol):
    """Streams chat completions; `stream` yields each SSE data payload as raw JSON bytes."""

    name: str

    def describe(self) -> dict[str, Any]:
        """Where requests go (for /healthz and the console); never includes a key."""
        ...

    def stream(self, params: dict[str, Any], iss: IssState | None) -> AsyncIterator[bytes]: ...

    async def complete(self, params: dict[str, Any], iss: IssState | None) -> bytes: ...

    async def close(self) -> None: ...
