"""GET /healthz: liveness and the backend in use; with the key (when one is set), the details."""

from __future__ import annotations

import asyncio

from config import Settings
from handlers.base import ApiHandler
from services.chat.inflight import Inflight
from services.iss.state import Tracker
from services.ops.connections import ConnectionStats
from services.upstream.base import Backend


class HealthHandler(ApiHandler):
    """Always 200 while the process serves; the body says what is degraded.

    The upstream appears as its host only (never OPENAI_BASE_URL whole: it may carry credentials).
    With SERVER_API_KEY set, only a caller sending it sees more than liveness and the backend.
    """

    def initialize(self, settings: Settings, backend: Backend, tracker: Tracker, inflight: Inflight,
                   connections: ConnectionStats) -> None:
        self.config = settings
        self.backend = backend
        self.tracker = tracker
        self.inflight = inflight
        self.connections = connections
        self.server_api_key = settings.server_api_key

    def get(self) -> None:
        _, why = self.config.backend_choice
        backend = self.backend.describe()
        tools = backend.pop("iss_tools", None)  # a detail: which models refused them, the calls run
        summary = {"status": "ok", "backend": {**backend, "why": why}}
        if not self.bearer_ok():
            self.write_json({**summary, "details": "send the SERVER_API_KEY as a bearer token to see them"})
            return
        self.write_json(
            {
                **summary,
                "iss": self.tracker.health(),
                **({"iss_tools": tools} if tools is not None else {}),
                "chat": {"in_flight": self.inflight.count, **self.inflight.outcomes},
                "connections": self.connections.to_dict(),
                # For leak checks under load: tasks that outlive their request show up here.
                "asyncio_tasks": len(asyncio.all_tasks()),
            }
        )
