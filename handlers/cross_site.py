"""Browsers on other sites: refused without SERVER_API_KEY; with it, the pages ALLOWED_ORIGINS lists (CORS).

A web page can make a browser POST to http://127.0.0.1:5000 (a `no-cors` fetch, a form), and with
DNS rebinding read the answer under its own name; with no key, that would spend the operator's
upstream key. Such a request has a foreign `Origin`, or a body type a page may send without asking
(`text/plain`, a form), or, rebinding, a `Host` that is not this machine's. An API client (Tavus,
the openai package, curl with `-H "Content-Type: application/json"`) sends JSON with no `Origin`
and is unaffected. With SERVER_API_KEY set the key decides: a page cannot know it.

CORS (`CorsMixin`): a web page on another origin may call the chat and model routes from a browser
only if its exact origin is in ALLOWED_ORIGINS (which needs SERVER_API_KEY: config.py refuses one
without the other). Its preflight (OPTIONS) is answered with the methods and the headers a chat
request carries (Authorization, Content-Type, conversation-id...); the answers name the page's origin
in Access-Control-Allow-Origin, never `*`, and never allow credentials (cookies): the key travels in
the Authorization header the page sets itself. Every answer of these routes says `Vary: Origin`.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest

from config import Settings
from handlers.base import ApiHandler
from services.common.errors import ApiError
from services.ops.forwarded import parse_address

# What a browser may send on a cross-origin chat request (the preflight's Access-Control-Allow-Headers).
ALLOWED_REQUEST_HEADERS = "Authorization, Content-Type, conversation-id, X-Request-Id, traceparent, tracestate"
PREFLIGHT_MAX_AGE = "600"


def is_local_name(hostname: str) -> bool:
    """localhost (and *.localhost) or a loopback address."""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def check_cross_site(request: HTTPServerRequest, settings: Settings) -> None:
    """Raise ApiError (403/415) for a request a foreign page could have made; nothing when a key is set."""
    if settings.api_keys:
        return
    _check_origin(request, " on a server without a key. To serve that page, set SERVER_API_KEY (the page sends "
                           "it as 'Authorization: Bearer ...') and list the page's origin in ALLOWED_ORIGINS")
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "Send the body as JSON, with 'Content-Type: application/json'.",
                       code="unsupported_media_type")
    _check_host(request, settings, " (or set SERVER_API_KEY)")


def check_public_read(request: HTTPServerRequest, settings: Settings) -> None:
    """The GET routes no key guards (/iss, /iss/passes, /iss/crew): refuse (403) what a page on another
    site makes a browser send (a foreign `Origin`; `Sec-Fetch-Site: cross-site` for anything but a
    link followed, e.g. an `<img>`), and, on loopback, a Host that is not this machine's (DNS
    rebinding), with SERVER_API_KEY set or not. curl, API clients and the console page (same origin)
    are unaffected."""
    _check_origin(request)
    fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    navigating = request.headers.get("Sec-Fetch-Mode", "").strip().lower() == "navigate"
    if fetch_site == "cross-site" and not navigating:
        raise ApiError(403, "Requests from a web page on another site are refused.", code="cross_origin_refused")
    _check_host(request, settings)


def _check_origin(request: HTTPServerRequest, or_else: str = "") -> None:
    origin = request.headers.get("Origin")
    if origin is not None and _origin_host(origin) != _host(request.host):
        raise ApiError(403, f"Requests from a web page on another origin are refused{or_else}.",
                       code="cross_origin_refused")


def host_allowed(request: HTTPServerRequest, settings: Settings) -> bool:
    """Whether the Host names this machine: a local name, one of ALLOWED_HOSTS (`*`: any), or, when the
    server listens beyond loopback, any IP address. A name that is not listed is what DNS rebinding
    sends: a page whose own name now points at this server, on loopback or on the visitor's network
    (a server on a LAN that the page's author cannot reach directly)."""
    if "*" in settings.allowed_hosts:
        return True
    hostname, _ = _host(request.host) or (None, None)
    if hostname is None:
        return False
    if is_local_name(hostname) or hostname in settings.allowed_hosts:
        return True
    return settings.listens_beyond_loopback and parse_address(hostname) is not None


def _check_host(request: HTTPServerRequest, settings: Settings, or_else: str = "") -> None:
    if not host_allowed(request, settings):
        answers_to = "IP addresses and local names" if settings.listens_beyond_loopback else "local names"
        raise ApiError(403, f"This server answers to {answers_to} only; add this host to ALLOWED_HOSTS{or_else}.",
                       code="host_not_allowed")


class HostCheck:
    """The Host check with its settings, for a handler to take through initialize(): the operational
    endpoints (/metrics, /healthz's details) answered without a token, as the chat routes without a key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def allows(self, request: HTTPServerRequest) -> bool:
        return host_allowed(request, self.settings)

    def check(self, request: HTTPServerRequest) -> None:
        _check_host(request, self.settings, " (or send a bearer token)")


def _host(host: str) -> tuple[str, int | None] | None:
    """A Host header's (hostname, port)."""
    try:
        parts = urlsplit("//" + host)
        return (parts.hostname, parts.port) if parts.hostname else None
    except ValueError:
        return None


def _origin_host(origin: str) -> tuple[str, int | None] | None:
    """An Origin's (hostname, port) as a Host header would carry it: the scheme's default port left out."""
    try:
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            return None
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, None if port == {"http": 80, "https": 443}[parts.scheme] else port


class CorsMixin(ApiHandler):
    """CORS for a route a web page may call (ALLOWED_ORIGINS): its preflight, and the answers' headers.

    Call `allow_origins(settings)` in initialize(); `cors_methods` names the route's method.
    """

    cors_methods = "POST"
    allowed_origins: tuple[str, ...] = ()

    def allow_origins(self, settings: Settings) -> None:
        self.allowed_origins = settings.allowed_origins
        self._cors_headers()  # set_default_headers ran before initialize(), without the list

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self._cors_headers()  # also after clear(): an error answer still reaches the page

    def _listed_origin(self) -> str | None:
        origin = self.request.headers.get("Origin")
        if origin and origin.lower() in self.allowed_origins:
            return origin
        return None

    def _cors_headers(self) -> None:
        if not self.allowed_origins:
            return
        self.set_header("Vary", "Origin")  # the answer depends on the page asking
        origin = self._listed_origin()
        if origin is not None:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", "X-Request-Id")

    def options(self, *args: str) -> None:
        """The preflight a browser sends before a page's cross-origin request."""
        self.set_header("Allow", f"{self.cors_methods}, OPTIONS")
        if self.request.headers.get("Origin") is None:
            self.set_status(204)  # not a preflight: what the route allows
            self.finish()
            return
        if self._listed_origin() is None:
            raise ApiError(403, "This page's origin is not allowed to call this server from a browser: list it in "
                                "ALLOWED_ORIGINS (with SERVER_API_KEY set, which the page sends as 'Authorization: "
                                "Bearer ...').", code="origin_not_allowed")
        self.set_header("Access-Control-Allow-Methods", f"{self.cors_methods}, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", ALLOWED_REQUEST_HEADERS)
        self.set_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        self.set_status(204)
        self.finish()
