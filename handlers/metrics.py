"""GET /metrics: the Prometheus exposition (text format, or OpenMetrics when the scraper asks)."""

from __future__ import annotations

from handlers.base import ApiHandler
from services.ops.recorder import Recorder


class MetricsHandler(ApiHandler):
    """Public by default; behind the SERVER_API_KEY bearer token when METRICS_PUBLIC=false."""

    def initialize(self, metrics: Recorder, public: bool, server_api_key: str | None) -> None:
        self.metrics = metrics
        self.public = public
        self.server_api_key = server_api_key

    def prepare(self) -> None:
        super().prepare()
        if not self.public:
            self.check_bearer()

    def get(self) -> None:
        body, content_type = self.metrics.exposition(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)
