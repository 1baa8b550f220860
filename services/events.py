"""In-process publish/subscribe for console events (placeholder: the console work replaces it)."""

from __future__ import annotations

from typing import Any


class EventHub:
    """Publishes events to console subscribers without ever blocking the publisher."""

    def __init__(self, buffer_size: int = 100) -> None:
        self.buffer_size = buffer_size

    def publish(self, event: dict[str, Any]) -> None:
        """Never blocks, never raises."""

    async def close(self) -> None:
        """Stop background work and drop subscribers."""
