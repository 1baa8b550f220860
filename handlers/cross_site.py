"""Without SERVER_API_KEY, the chat routes refuse what a browser on another site could send.

A web page can make a browser POST to http://127.0.0.1:5000 (a `no-cors` fetch, a form), and with
DNS rebinding read the answer under its own name; with no key, that would spend the operator's
upstream key. Such a request has a foreign `Origin`, or a body type a page may send without asking
(`text/plain`, a form), or, rebinding, a `Host` that is not this machine's. An API client (Tavus,
the openai package, curl with `-H "Content-Type: application/json"`) sends JSON with no `Origin`
and is unaffected. With SERVER_API_KEY set the key decides: a page cannot know it.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest

from config import Settings
from services.common.errors import ApiError


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
    origin = request.headers.get("Origin")
    if origin is not None and _origin_host(origin) != _host(request.host):
        raise ApiError(403, "Requests from a web page on another origin are refused; set SERVER_API_KEY to "
                            "serve browsers.", code="cross_origin_refused")
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "Send the body as JSON, with 'Content-Type: application/json'.",
                       code="unsupported_media_type")
    check_host(request, settings)


def host_allowed(request: HTTPServerRequest, settings: Settings) -> bool:
    """Whether the Host names this machine: a local name, one of ALLOWED_HOSTS, or any name when the
    server listens beyond loopback (a rebinding page gains nothing it could not reach directly)."""
    if settings.listens_beyond_loopback or "*" in settings.allowed_hosts:
        return True
    hostname, _ = _host(request.host) or (None, None)
    return hostname is not None and (is_local_name(hostname) or hostname in settings.allowed_hosts)


def check_host(request: HTTPServerRequest, settings: Settings) -> None:
    """403 for a Host that is not this machine's on a loopback server: a page that rebound its own name
    to 127.0.0.1 must not read what the server answers (chat, metrics, health details, the ISS)."""
    if not host_allowed(request, settings):
        raise ApiError(403, "This server listens on loopback and answers to local names only; add this host "
                            "to ALLOWED_HOSTS (or set SERVER_API_KEY).", code="host_not_allowed")


class HostCheck:
    """check_host with its settings, for a handler to take through initialize()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def allows(self, request: HTTPServerRequest) -> bool:
        return host_allowed(request, self.settings)

    def check(self, request: HTTPServerRequest) -> None:
        check_host(request, self.settings)


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
