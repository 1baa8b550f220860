"""GET /healthz: liveness and the backend in use; with the key (when one is set), the details."""

from __future__ import annotations

import asyncio
from typing import Any

from handlers.base import ApiHandler


class HealthHandler(ApiHandler):
    """Always 200 while the process serves; the body says what is degraded.

    The upstream appears as its host only (never OPENAI_BASE_URL whole: it may carry credentials).
    With SERVER_API_KEY set, only a caller sending it sees more than liveness and the backend.
    """

    def initialize(self, services: Any) -> None:
        self.services = services
        self.server_api_key = services.settings.server_api_key

    def get(self) -> None:
        services = self.services
        _, why = services.settings.backend_choice
        summary = {"status": "ok", "backend": {**services.backend.describe(), "why": why}}
        if not self.bearer_ok():
            self.write_json({**summary, "details": "send the SERVER_API_KEY as a bearer token to see them"})
            return
        self.write_json(
            {
                **summary,
                "iss": services.tracker.health(),
                "chat": {"in_flight": services.inflight.count, **services.inflight.outcomes},
                "connections": services.connections.to_dict(),
                # For leak checks under load: tasks that outlive their request show up here.
                "asyncio_tasks": len(asyncio.all_tasks()),
            }
        )


def routes(services: Any) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/healthz", HealthHandler, {"services": services})]
