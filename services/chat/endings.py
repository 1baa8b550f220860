"""How a chat request ends: the outcomes, the Ending recorded once (Exchange.end), the reasons an answer
is stopped from outside, and the last chunks a caller gets when it does not end on its own.

Pure functions: the handler asks which Ending a stop reason or an early failure makes, records it,
then sends the chunks these build.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from services.common.errors import ApiError
from services.common.openai_format import chunk, text_chunks


class Outcome(StrEnum):
    """How a chat request ended; each request has exactly one, recorded once by Exchange.end()."""

    DONE = "done"  # the answer was sent whole
    CANCELLED = "cancelled"  # the caller went away
    SUPERSEDED = "superseded"  # a newer request of the same conversation replaced it (SUPERSEDE)
    ERROR = "error"  # the caller got an error (status, or an SSE error event)
    FALLBACK = "fallback"  # the upstream failed before the first token; FALLBACK_REPLY was sent
    SHUTDOWN = "shutdown"  # the server ended it while shutting down
    LOST = "lost"  # the worker serving it died (killed by the watchdog, or crashed): counted by its successor


@dataclass(frozen=True)
class Ending:
    """A request's outcome with what goes with it: the answer's finish reason and usage, or the error."""

    outcome: Outcome
    status: int = 200
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: ApiError | None = None
    where: str | None = None  # for an error: where it happened


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


def fallback_chunks(text: str, model: str, *, usage: bool, first: dict[str, Any] | None = None
                    ) -> list[dict[str, Any]]:
    """FALLBACK_REPLY as a whole streamed completion (with a zero usage chunk when asked for); or, when
    the caller already has the upstream's role chunk (`first`: its id, model, created), as the rest of
    that completion, so the caller reads one answer with one id."""
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return list(text_chunks([text], model, usage=zero if usage else None, first=first))


def clean_end_chunks(first: dict[str, Any] | None, model: str) -> list[dict[str, Any]]:
    """A superseded answer's end: the stop chunk of the completion the caller is reading (`first`
    holds its id, model and time), or a whole empty completion when nothing was sent yet."""
    if first is None:
        return list(text_chunks([], model))
    return [chunk(first["id"], first["model"] or model, first["created"], {}, "stop")]
