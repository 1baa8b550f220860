"""One chat request's record: its timings and outcome, published step by step to the events hub."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from services.errors import ApiError

log = logging.getLogger("iss_llm.chat")


class Publisher(Protocol):
    def publish(self, event: dict[str, Any]) -> None: ...


class Outcome(StrEnum):
    """How a chat request ended; each request has exactly one, recorded once by Exchange.end()."""

    DONE = "done"  # the answer was sent whole
    CANCELLED = "cancelled"  # the caller went away
    SUPERSEDED = "superseded"  # a newer request of the same conversation replaced it (SUPERSEDE)
    ERROR = "error"  # the caller got an error (status, or an SSE error event)
    FALLBACK = "fallback"  # the upstream failed before the first token; FALLBACK_REPLY was sent
    SHUTDOWN = "shutdown"  # the server ended it while shutting down


@dataclass(frozen=True)
class Ending:
    """A request's outcome with what goes with it: the answer's finish reason and usage, or the error."""

    outcome: Outcome
    status: int = 200
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: ApiError | None = None
    where: str | None = None  # for an error: where it happened


class Exchange:
    """Records one request from arrival to its end (done, cancelled or error) and publishes each step.

    Event types are those of the one table in services/events/kinds.py, each event with "type",
    "id" and "t" (epoch seconds); a request ends with one outcome event ("done", "cancelled",
    "superseded" or "error", the last also carrying the outcome: "error", "fallback" or
    "shutdown"). Nothing secret is ever put on an event: no headers, no keys.
    """

    def __init__(
        self,
        hub: Publisher,
        *,
        request_id: str,
        conversation_id: str | None,
        remote_ip: str | None,
        path: str,
    ) -> None:
        self.hub = hub
        self.id = request_id
        self.conversation_id = conversation_id
        self.remote_ip = remote_ip
        self.path = path
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.chunks = 0
        self.outcome: Outcome | None = None
        self.status: int | None = None
        self.upstream_model: str | None = None
        self.tool_calls: dict[int, dict[str, str]] = {}

    def _emit(self, kind: str, **fields: Any) -> None:
        self.hub.publish({"type": kind, "id": self.id, "t": time.time(), **fields})

    def _elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 2)

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return round((self.first_token_at - self.started) * 1000, 2)

    def request(
        self,
        *,
        model: str,
        requested_model: str | None,
        stream: bool,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        upstream: dict[str, Any],
    ) -> None:
        self._emit(
            "request",
            conversation_id=self.conversation_id,
            remote_ip=self.remote_ip,
            path=self.path,
            model=model,
            requested_model=requested_model,
            stream=stream,
            messages=messages,
            params=params,
            upstream=upstream,
        )

    def iss(self, block: str, state: dict[str, Any] | None) -> None:
        self._emit("iss", block=block, state=state)

    def token(self, text: str) -> None:
        """One content delta relayed to the caller (an empty string still marks the first token)."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.chunks += 1
        if text:
            self._emit("tokens", text=text)

    def tool_call(self, delta: Any) -> None:
        """Fold one streamed tool-call delta (or a whole call) into the calls shown when done."""
        if not isinstance(delta, dict):
            return
        call = self.tool_calls.setdefault(delta.get("index", len(self.tool_calls)), {"name": "", "arguments": ""})
        function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        if isinstance(function.get("name"), str):
            call["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            call["arguments"] += function["arguments"]

    def end(self, ending: Ending) -> None:
        """Record how the request ended: the one place every outcome goes through, exactly once.

        Publishes the console's event for it ("done", "cancelled", "superseded" or "error") carrying
        the outcome, the status, the timings and the upstream's model, and logs one line. A hook
        that counts outcomes (metrics) belongs here.
        """
        if self.outcome is not None:
            return
        self.outcome = ending.outcome
        self.status = ending.status
        total_ms = self._elapsed_ms()
        common = {"outcome": ending.outcome.value, "status": ending.status, "ttft_ms": self.ttft_ms,
                  "total_ms": total_ms, "chunks": self.chunks, "upstream_model": self.upstream_model}
        if ending.outcome is Outcome.DONE:
            generating_s = (time.monotonic() - self.first_token_at) if self.first_token_at is not None else 0.0
            completion_tokens = (ending.usage or {}).get("completion_tokens") or self.chunks
            tps = round(completion_tokens / generating_s, 1) if generating_s > 0 else None
            self._emit(
                "done", finish_reason=ending.finish_reason, usage=ending.usage, tokens_per_second=tps,
                tool_calls=[self.tool_calls[index] for index in sorted(self.tool_calls)] or None, **common,
            )
            log.info(
                "request %s conversation=%s done finish=%s ttft_ms=%s total_ms=%s chunks=%d",
                self.id, self.conversation_id, ending.finish_reason, self.ttft_ms, total_ms, self.chunks,
            )
        elif ending.outcome in (Outcome.CANCELLED, Outcome.SUPERSEDED):
            self._emit(ending.outcome.value, at_ms=total_ms, **common)
            why = "by caller" if ending.outcome is Outcome.CANCELLED else "by a newer request"
            log.info(
                "request %s conversation=%s %s %s at_ms=%s chunks=%d",
                self.id, self.conversation_id, ending.outcome.value, why, total_ms, self.chunks,
            )
        else:
            error = ending.error
            assert error is not None
            self._emit("error", message=error.message, where=ending.where, code=error.code, at_ms=total_ms,
                       **common)
            log.warning(
                "request %s conversation=%s %s where=%s status=%d code=%s: %s",
                self.id, self.conversation_id, ending.outcome.value, ending.where, error.status, error.code,
                error.message,
            )
