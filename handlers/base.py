"""JSON API base: OpenAI-shaped errors and bearer-key auth for every API handler."""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
import tornado.web

from services.common import request_context
from services.common.errors import ApiError, status_error
from services.common.request_context import new_request_id, sanitized_request_id

log = logging.getLogger("iss_llm.http")

# The route label of a log line: the server's own paths; anything else a caller asks for is "other".
_ROUTES = frozenset({
    "/chat/completions", "/v1/chat/completions", "/models", "/v1/models", "/healthz", "/iss", "/metrics",
})


class ApiHandler(tornado.web.RequestHandler):
    """Base for JSON endpoints: every error is the OpenAI error object, never a traceback."""

    server_api_key: str | None = None
    request_id: str | None = None
    request_id_from_caller = False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        if self.request_id:
            # Also after clear() (an error replacing a half-built answer): the caller keeps the id.
            self.set_header("X-Request-Id", self.request_id)

    def prepare(self) -> None:
        """Name the request: the caller's X-Request-Id (sanitized) or a new id, for the answer and every log line."""
        given = sanitized_request_id(self.request.headers.get("X-Request-Id"))
        self.request_id = given or new_request_id()
        self.request_id_from_caller = given is not None
        self.set_header("X-Request-Id", self.request_id)
        request_context.begin(self.request_id, self.request.path if self.request.path in _ROUTES else "other")

    def logs_itself(self) -> bool:
        """Whether this request wrote its own log line (its outcome), so the access log leaves it out."""
        return False

    def outcome_status(self) -> int:
        """The status the access log reports: the one sent, unless the request recorded an outcome
        with its own (the chat handler: 499 for a caller that left mid-stream)."""
        return self.get_status()

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(obj))

    def check_bearer(self) -> None:
        """401 unless the Authorization header carries SERVER_API_KEY (when one is set)."""
        expected = self.server_api_key
        if not expected:
            return
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "Missing bearer token: send 'Authorization: Bearer <SERVER_API_KEY>'.",
                code="missing_api_key",
            )
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def bearer_ok(self) -> bool:
        """Whether the caller may see what SERVER_API_KEY guards (always, when no key is set)."""
        try:
            self.check_bearer()
        except ApiError:
            return False
        return True

    def send_api_error(self, error: ApiError) -> None:
        self.clear()
        if error.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="iss-llm"')
        if error.retry_after is not None:
            self.set_header("Retry-After", str(max(1, error.retry_after)))
        self.set_status(error.status)
        self.finish(orjson.dumps(error.body()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            self.send_api_error(exc)
            return
        if isinstance(exc, tornado.web.HTTPError):
            reason = exc.log_message if exc.log_message and status_code < 500 else None
        else:
            reason = None
        message = reason
        if status_code == 405:
            message = f"Method {self.request.method} is not allowed on {self.request.path}."
        elif status_code >= 500:
            message = "The server had an error while processing your request."
        self.finish(orjson.dumps(status_error(status_code, message).body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """An ApiError is an answer, not a failure; anything else is logged by path, never by URI."""
        if not isinstance(value, ApiError):
            log_by_path(self, value, (typ, value, tb), self.request_id)


def log_by_path(
    handler: tornado.web.RequestHandler, value: BaseException | None, exc_info: Any, request_id: str | None = None
) -> None:
    """Tornado's log_exception without the query string, where a console token may travel."""
    request = handler.request
    if isinstance(value, tornado.web.HTTPError):
        log.warning("%d %s %s (%s)", value.status_code, request.method, request.path, request.remote_ip)
        return
    log.error("uncaught exception in %s %s (request %s)", request.method, request.path, request_id,
              exc_info=exc_info)


class NotFoundHandler(ApiHandler):
    """Any unknown path: 404 in the OpenAI error shape."""

    def prepare(self) -> None:
        super().prepare()
        raise ApiError(
            404, f"Unknown path {self.request.path}; see /v1/models and /v1/chat/completions.",
            code="unknown_url",
        )
