"""GET /metrics: the Prometheus exposition (text format, or OpenMetrics when the scraper asks)."""

from __future__ import annotations

from handlers.base import ApiHandler
from handlers.cross_site import HostCheck
from services.common.api_keys import ApiKeys
from services.ops.recorder import Recorder


class MetricsHandler(ApiHandler):
    """Behind a bearer token (a server key or METRICS_TOKEN) unless public (see Settings.ops_public);
    public, a loopback server answers it under local names only, as the chat routes."""

    def initialize(self, metrics: Recorder, public: bool, keys: ApiKeys, host_check: HostCheck) -> None:
        self.metrics = metrics
        self.public = public
        self.keys = keys
        self.hosts = host_check

    def prepare(self) -> None:
        super().prepare()
        if not self.public:
            self.check_bearer()
        elif not (self.keys and self.bearer_ok()):  # a token, when there are any, opens it under any Host
            self.hosts.check(self.request)

    def get(self) -> None:
        body, content_type = self.metrics.exposition(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)
