"""The composition root: builds every collaborator once (build_services) and wires the handlers (make_app).

Nothing here runs a process: server.py listens, forks workers and drains. Each handler takes exactly
the collaborators it uses through initialize(), from the table make_app builds.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerRequest

from config import Settings
from handlers.base import ApiHandler, NotFoundHandler
from handlers.chat import ChatHandler
from handlers.console import ConsoleAuth, ConsolePageHandler, ConsoleSocketHandler
from handlers.cross_site import HostCheck
from handlers.health import HealthHandler
from handlers.iss import CrewHandler, IssHandler, PassesHandler
from handlers.metrics import MetricsHandler
from handlers.models import ModelsHandler
from handlers.static import StaticHandler
from services.chat.conversations import Conversations
from services.chat.inflight import Inflight
from services.chat.lost import count_lost, publish_lost
from services.chat.models import ModelCatalog
from services.chat.platforms import Platforms
from services.common.api_keys import ApiKeys
from services.common.bounded_work import BoundedWork
from services.common.futures import retrieve_outcome
from services.console import Hub, MemoryHub
from services.console.hub import worker_name
from services.console.login_throttle import LoginThrottle, RedisLoginThrottle
from services.console.redis_hub import RedisHub
from services.console.station_feed import StationFeed
from services.iss.block import BlockMemo
from services.iss.cluster_feed import RedisIssFeed
from services.iss.queries import IssQueries
from services.iss.state import Tracker
from services.ops.connections import CappedHTTPServer, ConnectionStats, fitting_cap
from services.ops.forwarded import TrustedProxies
from services.ops.heartbeat import Lost
from services.ops.rate_limit import RateLimit
from services.ops.recorder import NullMetrics, Recorder
from services.ops.tracing import NoTracing, Tracing
from services.ops.tracing_choice import make_tracing
from services.upstream import make_backend
from services.upstream.base import Backend

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("iss_llm")

CLOSE_S = 5.0  # at shutdown, the longest one collaborator's close() may take before it is left behind
LOST_SETTLE_S = 10.0  # how long a new worker waits for Redis before closing its predecessor's requests anyway

Route = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]


class Closable(Protocol):
    async def close(self) -> None: ...


@dataclass
class Services:
    """Every collaborator of the handlers, built once per process."""

    settings: Settings
    tracker: Tracker
    backend: Backend
    hub: Hub
    station: StationFeed
    console_token: str
    iss: IssQueries
    inflight: Inflight = field(default_factory=Inflight)
    connections: ConnectionStats = field(default_factory=ConnectionStats)
    metrics: Recorder = field(default_factory=NullMetrics)
    models: ModelCatalog | None = None  # what /v1/models lists
    iss_lease: RedisIssFeed | None = None  # with REDIS_URL: one ISS poller for the cluster
    conversations: Conversations = field(default_factory=Conversations)  # for SUPERSEDE
    iss_limit: RateLimit = field(default_factory=lambda: RateLimit(0, 1))  # /iss* per address
    tracing: Tracing = field(default_factory=NoTracing)  # OpenTelemetry, with OTEL_EXPORTER_OTLP_ENDPOINT
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)  # wrong console tokens

    async def start(self) -> None:
        """Begin background work (ISS refresh) now rather than on the first request."""
        await self.hub.start()
        if self.iss_lease is not None:
            await self.iss_lease.start()
        await self.tracker.start()
        await self.metrics.start()

    async def close_lost(self, lost: Lost) -> None:
        """Requests a dead worker had open (this worker took its place): counted at once, then closed in
        the console once the cluster feed is up (at most LOST_SETTLE_S later), so every worker's console
        hears of it."""
        count_lost(lost, self.metrics, self.inflight)
        if lost.requests:
            await self.hub.settle(LOST_SETTLE_S)
            publish_lost(lost, self.hub)

    async def drain(self) -> None:
        """Shutdown began: leave cluster duties to the workers that stay (the ISS poller's lease)."""
        if self.iss_lease is not None:
            await self.iss_lease.resign()

    async def close(self, each_within: float = CLOSE_S) -> None:
        """Close every collaborator in turn, none for longer than `each_within` seconds: one that hangs
        or fails is named in the log and left behind, so a worker's shutdown always ends."""
        parts: list[tuple[str, Closable | None]] = [
            ("metrics", self.metrics), ("console feed", self.station), ("console hub", self.hub),
            ("console login throttle", self.login_throttle), ("upstream client", self.backend),
            ("ISS lease", self.iss_lease), ("ISS tracker", self.tracker), ("ISS queries", self.iss),
            ("tracing", self.tracing),
        ]
        for name, part in parts:
            if part is None:
                continue
            closing = asyncio.ensure_future(part.close())
            await asyncio.wait({closing}, timeout=each_within)  # a task: its own cancel-handling cannot hold us
            if not closing.done():
                closing.cancel()
                closing.add_done_callback(retrieve_outcome)
                log.warning("shutdown: closing the %s took more than %g s; left behind", name, each_within)
            elif not closing.cancelled() and (exc := closing.exception()) is not None:
                log.warning("shutdown: closing the %s failed (%s)", name, type(exc).__name__)


def build_services(
    settings: Settings,
    *,
    tracker: Tracker | None = None,
    backend: Backend | None = None,
    hub: Hub | None = None,
) -> Services:
    """The real collaborators; a test hands in its own tracker, backend or hub."""
    iss_lease = None
    if tracker is None:
        from services.iss.tracker import IssTracker

        if settings.redis_url:
            iss_lease = RedisIssFeed(settings.redis_url, worker_name(), settings.tle_refresh_interval)
        tracker = IssTracker(settings, feed=iss_lease)
        if iss_lease is not None:
            iss_lease.attach(tracker.fix_arrived, tracker.elements_arrived, tracker.elements)
    queries = IssQueries(tracker, searches=BoundedWork(settings.pass_searches, settings.pass_search_queue,
                                                       name="pass-search"))
    if backend is None:
        backend = make_backend(settings, queries)
    if hub is None:
        record_bytes, buffer_bytes = settings.console_record_bytes, settings.console_buffer_bytes
        hub = (
            RedisHub(settings.redis_url, settings.console_buffer, record_bytes=record_bytes, buffer_bytes=buffer_bytes)
            if settings.redis_url
            else MemoryHub(settings.console_buffer, record_bytes=record_bytes, buffer_bytes=buffer_bytes)
        )
    metrics: Recorder = NullMetrics()
    if settings.metrics_enabled:
        from services.ops.metrics import Metrics  # prometheus_client: imported only when metrics are on

        # The model label's values: the configured models always, a few others at most.
        configured = (settings.llm_model, settings.default_model, *(upstream for _, upstream in settings.model_map))
        metrics = Metrics(configured_models=configured)
        metrics.watch_iss(tracker.health)
        hub.fanout.on_resync = metrics.console_resynced
    return Services(
        settings=settings,
        tracker=tracker,
        backend=backend,
        hub=hub,
        station=StationFeed(hub, tracker),
        console_token=settings.console_token or secrets.token_urlsafe(24),
        inflight=Inflight(metrics),
        metrics=metrics,
        models=ModelCatalog(settings, getattr(backend, "list_models", None)),
        iss_lease=iss_lease,
        iss=queries,
        iss_limit=RateLimit(settings.iss_rate_per_min, settings.iss_rate_burst),
        tracing=make_tracing(settings.otel_endpoint, settings.otel_service_name, settings.otel_capture_content),
        # With Redis, every worker counts the same wrong tokens.
        login_throttle=RedisLoginThrottle(settings.redis_url) if settings.redis_url else LoginThrottle(),
    )


def routes(settings: Settings, services: Services) -> list[Route]:
    """The handler table: each route with exactly the collaborators its handler uses."""
    keys = ApiKeys(settings.api_keys)  # the chat routes' (and the model list's): callers by name
    # The operational endpoints also take METRICS_TOKEN (a scraper's credentials, nothing more).
    ops_keys = ApiKeys((*settings.api_keys, ("metrics", settings.metrics_token)))
    hosts = HostCheck(settings)
    chat = {
        "settings": settings, "tracker": services.tracker, "backend": services.backend, "hub": services.hub,
        "inflight": services.inflight, "metrics": services.metrics, "conversations": services.conversations,
        "platforms": Platforms(settings), "tracing": services.tracing, "keys": keys, "blocks": BlockMemo(),
    }
    models = {"settings": settings, "keys": keys, "catalog": services.models or ModelCatalog(settings, None)}
    health = {"settings": settings, "backend": services.backend, "tracker": services.tracker,
              "inflight": services.inflight, "connections": services.connections, "keys": ops_keys,
              "public": settings.ops_public, "host_check": hosts}
    public = {"settings": settings, "limit": services.iss_limit}
    table: list[Route] = [
        (r"/chat/completions", ChatHandler, chat),
        (r"/v1/chat/completions", ChatHandler, chat),
        (r"/models", ModelsHandler, models),
        (r"/v1/models", ModelsHandler, models),
        (r"/healthz", HealthHandler, health),
        (r"/iss", IssHandler, {**public, "tracker": services.tracker}),
        (r"/iss/passes", PassesHandler, {**public, "queries": services.iss}),
        (r"/iss/crew", CrewHandler, {**public, "queries": services.iss}),
    ]
    if settings.console_enabled:
        auth = ConsoleAuth(services.console_token)
        table += [
            (r"/console", ConsolePageHandler, {"auth": auth, "buffer_size": settings.console_buffer,
                                               "throttle": services.login_throttle}),
            (r"/console/ws", ConsoleSocketHandler,
             {"auth": auth, "hub": services.hub, "station": services.station, "metrics": services.metrics}),
        ]
    if settings.metrics_enabled:
        table.append((r"/metrics", MetricsHandler, {"metrics": services.metrics, "public": settings.ops_public,
                                                    "keys": ops_keys, "host_check": hosts}))
    return table


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log without query strings: a console token in ?token= must never reach a log. The status
    is the recorded outcome's (ApiHandler.outcome_status). Chat requests log their own one line."""
    if isinstance(handler, ApiHandler) and handler.logs_itself():
        return  # one line per request: a chat request's outcome line says it all
    status = handler.outcome_status() if isinstance(handler, ApiHandler) else handler.get_status()
    request = handler.request
    # A caller that left (499) is the caller's doing and no sign of trouble: INFO, as chat's own line.
    level = logging.INFO if status < 400 or status == 499 else logging.WARNING if status < 500 else logging.ERROR
    duration_ms = round(1000.0 * request.request_time(), 1)
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %s (%s) %.1fms",
        status,
        request.method,
        request.path,
        request.remote_ip,
        duration_ms,
        extra={"status": status, "method": request.method, "path": request.path, "remote_ip": request.remote_ip,
               "duration_ms": duration_ms},
    )


class App(tornado.web.Application):
    """The Tornado application, holding the collaborators it was built with (for the process and tests)."""

    def __init__(self, settings: Settings, services: Services, **debug: Any) -> None:
        super().__init__(
            routes(settings, services),
            default_handler_class=NotFoundHandler,
            static_path=str(ROOT / "static"),
            static_handler_class=StaticHandler,
            template_path=str(ROOT / "templates"),
            log_function=_log_request,
            compress_response=False,
            **debug,
        )
        self.services = services
        self.proxies = TrustedProxies(settings.forwarded_from)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        """Every request passes here first: its caller's address from a trusted proxy's headers
        (TRUSTED_PROXIES), before any handler, log line or throttle reads it."""
        self.proxies.apply(request)
        return super().find_handler(request, **kwargs)


def make_app(settings: Settings, services: Services | None = None, **debug: Any) -> App:
    """The Tornado application with every route; `services` defaults to real collaborators."""
    return App(settings, services or build_services(settings), **debug)


def make_server(app: App, settings: Settings) -> HTTPServer:
    """The HTTP server with its limits: open connections (MAX_CONNECTIONS, lowered to what the
    open-file limit holds), body size (the chat handler answers 413 itself), headers, timeouts."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return CappedHTTPServer(
        app,
        max_connections=fitting_cap(settings.max_connections, soft),
        stats=app.services.connections,
        # Never Tornado's xheaders (it believes any peer): App.find_handler reads the forwarded headers
        # of TRUSTED_PROXIES alone.
        xheaders=False,
        max_body_size=settings.max_body_bytes,
        body_timeout=30.0,
        idle_connection_timeout=75.0,
        max_header_size=64 * 1024,
    )
