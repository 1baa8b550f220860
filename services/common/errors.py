"""The one error type of the chat path: what the caller sees, as the OpenAI error object and a status."""

from __future__ import annotations

from http.client import responses
from typing import Any


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(Exception):
    """An error the caller sees: an HTTP status before streaming began, an SSE error event after.

    Raised for what a caller sent (400, 401, 413...), by backends for what an upstream did
    (`type="upstream_error"`, 502/504...) and by the server itself (503 shutting down, 500).
    `message` is always safe to show: no key, no traceback.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        # Seconds for a `Retry-After` header (a 429 or 503 that asks the caller to come back).
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    @property
    def callers_fault(self) -> bool:
        """The caller's own request was refused (a 4xx `invalid_request_error`, e.g. the upstream's
        400/422 as `upstream_rejected`): a fallback reply would hide from the caller what to fix. An
        upstream's 5xx, timeout, 429 (`rate_limit_error`), the operator's bad key or a 404
        (`upstream_error`, 502) are not."""
        return 400 <= self.status < 500 and self.type == "invalid_request_error"


def status_error(status: int, message: str | None = None) -> ApiError:
    """The error for a bare HTTP status (Tornado's own 404, 405, 400...): the status's phrase as
    its code (snake_case) and, unless one is given, as its message."""
    phrase = responses.get(status, "Error")
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, message or phrase, type=kind, code=phrase.lower().replace(" ", "_"))


def upstream_error(status: int, message: str, *, code: str, type: str = "upstream_error") -> ApiError:
    """An upstream's failure, as the caller sees it."""
    return ApiError(status, message, type=type, code=code)


def tool_round_error(error: ApiError) -> ApiError:
    """An error of a later tool round: that request carried the layer's own tool calls and results,
    so a refusal of it is the layer's failure, not the caller's, and keeps FALLBACK_REPLY's cover."""
    if not error.callers_fault:
        return error
    return upstream_error(502, f"The upstream LLM refused the layer's tool round: {error.message}",
                          code="upstream_rejected_tool_round")
