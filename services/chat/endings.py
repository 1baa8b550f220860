"""How a chat request ends when it does not end on its own: the reasons, the outcome, the last chunks.

Pure functions: the handler asks which Ending a stop reason or an early failure makes, records it,
then sends the chunks these build.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from services.chat.exchange import Ending, Outcome
from services.common.errors import ApiError
from services.common.openai_format import chunk, text_chunks

# The status recorded for a caller that went away (nginx's "client closed request").
CALLER_LEFT = 499


class Stop(Enum):
    """Why an answer was stopped from outside its task; the first reason given stands."""

    CALLER_GONE = "caller gone"
    SHUTDOWN = "server shutdown"
    SUPERSEDED = "superseded by a newer request of the conversation"
    FIRST_TOKEN_TIMEOUT = "no content token within FIRST_TOKEN_TIMEOUT"
    MAX_STREAM_SECONDS = "the answer took longer than MAX_STREAM_SECONDS"


def failed_before_first_token(error: ApiError, fallback_reply: str | None) -> Ending:
    """The fallback reply when one is set; else the error (an HTTP status while one can be sent).

    An error that is the caller's own fault (ApiError.callers_fault: its parameters were refused)
    reaches the caller as that error even with a fallback reply set."""
    if error.callers_fault:
        return Ending(Outcome.ERROR, error.status, error=error,
                      where="upstream, before the first token; the caller's request was refused (no fallback)")
    if fallback_reply:
        return Ending(Outcome.FALLBACK, 200, error=error, where="upstream, before the first token; fallback reply sent")
    return Ending(Outcome.ERROR, error.status, error=error, where="upstream, before the first token")


def stopped(reason: Stop | None, *, caller_gone: bool, first_token_timeout: float | None,
            fallback_reply: str | None, max_stream_seconds: float | None = None, content_sent: bool = False) -> Ending:
    """The Ending of an answer stopped before its end for `reason` (`content_sent`: a content token
    or tool call already reached the caller)."""
    if reason is Stop.SHUTDOWN and not caller_gone:
        error = ApiError(503, "This server is shutting down; the answer was cut short.",
                         code="server_shutting_down", type="server_error")
        return Ending(Outcome.SHUTDOWN, error.status, error=error, where="server shutdown")
    if reason is Stop.SUPERSEDED:
        return Ending(Outcome.SUPERSEDED, 200, finish_reason="stop")
    if reason is Stop.FIRST_TOKEN_TIMEOUT:
        error = ApiError(504, f"The upstream LLM sent no token within {first_token_timeout or 0:g} s.",
                         type="upstream_error", code="first_token_timeout")
        return failed_before_first_token(error, fallback_reply)
    if reason is Stop.MAX_STREAM_SECONDS:
        error = ApiError(504, f"The answer took longer than {max_stream_seconds or 0:g} s (MAX_STREAM_SECONDS).",
                         type="upstream_error", code="stream_too_long")
        if not content_sent:
            return failed_before_first_token(error, fallback_reply)
        return Ending(Outcome.ERROR, error.status, error=error, where="upstream, mid-stream")
    return Ending(Outcome.CANCELLED, CALLER_LEFT)


def fallback_chunks(text: str, model: str, *, usage: bool) -> list[dict[str, Any]]:
    """FALLBACK_REPLY as a whole streamed completion (with a zero usage chunk when asked for)."""
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return list(text_chunks([text], model, usage=zero if usage else None))


def clean_end_chunks(first: dict[str, Any] | None, model: str) -> list[dict[str, Any]]:
    """A superseded answer's end: the stop chunk of the completion the caller is reading (`first`
    holds its id, model and time), or a whole empty completion when nothing was sent yet."""
    if first is None:
        return list(text_chunks([], model))
    return [chunk(first["id"], first["model"] or model, first["created"], {}, "stop")]
