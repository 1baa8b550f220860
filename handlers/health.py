"""GET /healthz: liveness and the backend in use; the details for the operator (see Settings.ops_public)."""

from __future__ import annotations

import asyncio

from config import Settings
from handlers.base import ApiHandler
from handlers.cross_site import HostCheck
from services.chat.inflight import Inflight
from services.common.api_keys import ApiKeys
from services.iss.state import Tracker
from services.ops.connections import ConnectionStats
from services.upstream.base import Backend


class HealthHandler(ApiHandler):
    """Always 200 while the process serves; the body says what is degraded.

    The upstream appears as its host only (never OPENAI_BASE_URL whole: it may carry credentials).
    The details (ISS, the layer's tools, chat counts, connections) are for the operator: behind a
    bearer token (a server key or METRICS_TOKEN) unless public (Settings.ops_public), and public,
    under local names only on a loopback server. Liveness and the backend answer anyone.
    """

    def initialize(self, settings: Settings, backend: Backend, tracker: Tracker, inflight: Inflight,
                   connections: ConnectionStats, keys: ApiKeys, public: bool, host_check: HostCheck) -> None:
        self.config = settings
        self.backend = backend
        self.tracker = tracker
        self.inflight = inflight
        self.connections = connections
        self.keys = keys
        self.public = public
        self.hosts = host_check

    def details_allowed(self) -> bool:
        if self.keys and self.bearer_ok():
            return True
        return self.public and self.hosts.allows(self.request)

    def get(self) -> None:
        _, why = self.config.backend_choice
        backend = self.backend.describe()
        tools = backend.pop("iss_tools", None)  # a detail: which models refused them, the calls run
        summary = {"status": "ok", "backend": {**backend, "why": why}}
        if not self.details_allowed():
            # Liveness and the backend's kind only: where the upstream lives is a detail too.
            self.write_json({"status": "ok", "backend": {"backend": backend.get("backend")},
                             "details": "send a server key or METRICS_TOKEN as a bearer token to see them"})
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
