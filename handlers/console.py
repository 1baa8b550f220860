"""GET /console (the page) and /console/ws (its live feed), behind the console token."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import tornado.web
import tornado.websocket

from handlers.base import log_by_path
from services.common import request_context
from services.common.futures import retrieve_outcome, within
from services.common.request_context import request_id_from
from services.console import EVENT_TYPES, Hub, Subscription, encode
from services.console.login_throttle import LoginThrottle
from services.console.station_feed import StationFeed
from services.ops.forwarded import forwarded_scheme
from services.ops.recorder import Recorder

log = logging.getLogger("iss_llm.console")

COOKIE = "iss_llm_console"
COOKIE_PATH = "/console"
MAX_SOCKETS = 32
SESSION_SECONDS = 12 * 3600  # a console session (its cookie) lasts this long


class ConsoleAuth:
    """Checks the console token and the session cookie derived from it, in constant time.

    The cookie is `<issued>.<HMAC of issued, keyed by the token>`: any worker holding the token can
    check it, and it stops working `session_seconds` after it was issued, whatever the browser
    keeps. Wrong tokens are counted by the page's LoginThrottle.
    """

    def __init__(self, token: str, session_seconds: float = SESSION_SECONDS) -> None:
        self._token = token.encode()
        self.session_seconds = session_seconds

    def _sign(self, issued: str) -> str:
        return hmac.new(self._token, b"iss-llm console session " + issued.encode(), hashlib.sha256).hexdigest()

    def new_cookie(self) -> str:
        issued = str(int(time.time()))
        return f"{issued}.{self._sign(issued)}"

    def token_ok(self, given: str | None) -> bool:
        """Whether `given` is the console token (compared in constant time)."""
        return given is not None and given != "" and hmac.compare_digest(given.encode(), self._token)

    def cookie_ok(self, handler: tornado.web.RequestHandler) -> bool:
        """Whether the request carries a valid session cookie that has not expired."""
        value = handler.get_cookie(COOKIE) or ""
        issued, _, signature = value.partition(".")
        if not issued.isdigit() or len(issued) > 12:
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(issued).encode()):
            return False
        return 0 <= time.time() - int(issued) <= self.session_seconds


def _content_security_policy(host: str) -> str:
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        f"connect-src 'self' ws://{host} wss://{host}",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))


class ConsolePageHandler(tornado.web.RequestHandler):
    """The console page: trades ?token= for a session cookie, then serves the page.

    The right token always gets in; a wrong one is counted (per address, in total) and answered 403,
    or 429 past the throttle's budget."""

    def initialize(self, auth: ConsoleAuth, buffer_size: int, throttle: LoginThrottle) -> None:
        self.auth = auth
        self.buffer_size = buffer_size
        self.throttle = throttle

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", _content_security_policy(self.request.host))

    async def get(self) -> None:
        token = self.get_query_argument("token", None)
        if token is not None:
            if not self.auth.token_ok(token):
                verdict = await self.throttle.failed(self.request.remote_ip)
                if verdict.throttled:
                    self.set_header("Retry-After", str(int(self.throttle.window)))
                    who = "from this address" if verdict.address_over else "lately"
                    self._locked(429, f"Too many wrong console tokens {who}; wait a minute.")
                else:
                    self._locked(403, "That console token is not valid.")
                return
            self.set_cookie(
                COOKIE,
                self.auth.new_cookie(),
                path=COOKIE_PATH,
                max_age=int(self.auth.session_seconds),
                httponly=True,
                samesite="Strict",
                # Behind a TLS proxy whose forwarded headers are not believed, its X-Forwarded-Proto
                # still marks the cookie Secure: a caller who sends that header over plain HTTP only
                # keeps its own cookie from coming back.
                secure=self.request.protocol == "https" or forwarded_scheme(self.request.headers) == "https",
            )
            # Drop the token from the address bar and from the browser history.
            self.redirect(COOKIE_PATH, status=303)
            return
        if not self.auth.cookie_ok(self):
            self._locked(401, "Open the console URL printed when the server started (it carries the token).")
            return
        self.render(
            "console.html", buffer_size=self.buffer_size, ws_path=f"{COOKIE_PATH}/ws",
            event_types=json.dumps(dict(EVENT_TYPES)),
        )

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        log_by_path(self, value, (typ, value, tb))

    def _locked(self, status: int, message: str) -> None:
        self.set_status(status)
        self.render("console_locked.html", message=message)


class ConsoleSocketHandler(tornado.websocket.WebSocketHandler):
    """Streams the hub's events to one page: a replay first, then live batches."""

    def initialize(self, auth: ConsoleAuth, hub: Hub, station: StationFeed, metrics: Recorder) -> None:
        self.auth = auth
        self.hub = hub
        self.station = station
        self.metrics = metrics
        self._counted = False
        self.subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        log_by_path(self, value, (typ, value, tb))

    @property
    def ping_interval(self) -> float:
        return 30.0

    def check_origin(self, origin: str) -> bool:
        """Tornado's rule (the page's Origin names this Host), with the reason logged when it refuses:
        behind a proxy that rewrites Host, that line is the only clue."""
        if super().check_origin(origin):
            return True
        log.warning(
            "console socket refused: its Origin %r is not this server's Host %r (behind a reverse proxy, "
            "pass the Host on: nginx `proxy_set_header Host $http_host;`)",
            origin[:200], self.request.host[:200],
        )
        return False

    def prepare(self) -> None:
        if not self.auth.cookie_ok(self):
            raise tornado.web.HTTPError(403, "console session cookie missing or invalid")
        if self.hub.subscribers >= MAX_SOCKETS:
            raise tornado.web.HTTPError(503, "too many console connections")
        # The socket joins the request that opened it in the log (the upgrade's id, or the caller's).
        self.request_id = request_id_from(self.request.headers.get("X-Request-Id"))
        request_context.begin(self.request_id, COOKIE_PATH + "/ws")

    def open(self) -> None:
        # Each batch leaves at once: with Nagle on, a batch would wait for the page's delayed ACK
        # of the one before (up to 40 ms), and the live view would lag the stream it mirrors.
        self.set_nodelay(True)
        subscription = self.hub.subscribe()
        self.subscription = subscription
        self.metrics.console_opened()
        self._counted = True
        # Subscribed and snapshotted in the same tick: no event is both replayed and sent live.
        hello = encode({
            "type": "hello",
            "server_time": time.time(),
            "buffer": self.hub.buffer_size,
            "batch_ms": round(subscription.policy.batch_interval * 1000),
            **self.hub.status(),
            "requests": self.hub.snapshot(),
        })
        self._tasks = [asyncio.ensure_future(self._pump([hello], subscription))]
        self.station.wanted()

    def on_message(self, message: str | bytes) -> None:
        try:
            op = json.loads(message).get("op")
        except (ValueError, AttributeError):
            return
        if op == "resync" and self.subscription is not None:
            self.subscription.resync()

    def on_close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
        if self._counted:
            self._counted = False
            self.metrics.console_closed()
        for task in self._tasks:
            task.cancel()

    async def _pump(self, first: list[str], subscription: Subscription) -> None:
        """Send what the hub has batched; the next batch is fetched only once this one is written."""
        messages: list[str] | None = first
        try:
            while messages is not None:
                if not await self._send(messages, subscription.policy.stall_timeout):
                    return
                messages = await subscription.next_messages()
            self.close(1001, "console hub closed")  # the server is shutting down
        finally:
            subscription.close()

    async def _send(self, messages: list[str], stall_timeout: float) -> bool:
        try:
            for message in messages:
                written = self.write_message(message)
                # Only the last write is awaited; the others, or this one if the wait is cut
                # short, fail unseen when the page goes away mid-batch.
                written.add_done_callback(retrieve_outcome)
            await within(asyncio.shield(written), stall_timeout)
        except tornado.websocket.WebSocketClosedError:
            return False
        except TimeoutError:
            log.warning("console socket stuck for %.0fs: closing it", stall_timeout)
            self.close(1013, "console too slow")
            return False
        return True
