"""A request body read as it arrives, up to a limit: past it, a 413 rather than a reset connection."""

from __future__ import annotations

from tornado.http1connection import HTTP1Connection

from handlers.base import ApiHandler
from services.common.errors import ApiError

# An oversized body is read to its end and thrown away, so the caller gets its 413 rather than a
# reset connection; past this much it is cut off instead.
DISCARD_LIMIT = 64 * 1024 * 1024


class BoundedBodyHandler(ApiHandler):
    """For handlers decorated with @tornado.web.stream_request_body: `body_limit` bytes at most.

    Call check_declared_size() in prepare() and take the body with read_body() in the method.
    """

    body_limit = 1024 * 1024
    _body: bytearray | None = None
    _too_large = False

    def check_declared_size(self) -> None:
        """Refuse before reading a body declared too large when the caller waits (Expect) or it is absurd."""
        length = self.request.headers.get("Content-Length", "")
        declared = int(length) if length.isdigit() else 0
        expects_continue = self.request.headers.get("Expect", "").lower() == "100-continue"
        if declared > self.body_limit and (expects_continue or declared > DISCARD_LIMIT):
            raise self._too_large_error()
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):  # always, behind Tornado's HTTP/1.1 server
            connection.set_max_body_size(max(DISCARD_LIMIT, self.body_limit))

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        if self._body is None:
            self._body = bytearray()
        self._body += chunk
        if len(self._body) > self.body_limit:
            self._too_large = True
            self._body = bytearray()

    def read_body(self) -> bytes:
        """The whole body (and the buffer released); ApiError 413 when it was over the limit."""
        if self._too_large:
            raise self._too_large_error()
        body, self._body = bytes(self._body or b""), None
        return body

    def _too_large_error(self) -> ApiError:
        return ApiError(413, f"The request body is larger than the limit of {self.body_limit} bytes.",
                        code="request_too_large")
