"""GET /healthz: liveness, the backend in use and the ISS source's state."""

from __future__ import annotations

import asyncio
from typing import Any

from handlers.base import ApiHandler


class HealthHandler(ApiHandler):
    """Always 200 while the process serves; the body says what is degraded."""

    def initialize(self, services: Any) -> None:
        self.services = services

    def get(self) -> None:
        services = self.services
        self.write_json(
            {
                "status": "ok",
                "backend": services.backend.describe(),
                "iss": services.tracker.health(),
                "chat": {"in_flight": services.inflight.count, **services.inflight.outcomes},
                "connections": services.connections.to_dict(),
                # For leak checks under load: tasks that outlive their request show up here.
                "asyncio_tasks": len(asyncio.all_tasks()),
            }
        )


def routes(services: Any) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/healthz", HealthHandler, {"services": services})]
