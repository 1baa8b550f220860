"""One chat request's record: its timings and outcome, published step by step to the events hub."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from services.common.errors import ApiError

log = logging.getLogger("iss_llm.chat")


class Publisher(Protocol):
    def publish(self, event: dict[str, Any]) -> None: ...


class OutcomeObserver(Protocol):
    """Told once when a request ended, with the exchange and its timings (services.ops.metrics.Metrics)."""

    def outcome(self, record: Exchange) -> None: ...


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


MAX_TOOL_CALLS = 16
MAX_TOOL_NAME = 256
MAX_TOOL_ARGUMENTS = 8 * 1024


class ToolCallRecord:
    """One tool call as the record keeps it: its name and arguments as parts, joined once at the end."""

    __slots__ = ("_arguments", "_arguments_len", "_name", "_name_len")

    def __init__(self) -> None:
        self._name: list[str] = []
        self._name_len = 0
        self._arguments: list[str] = []
        self._arguments_len = 0

    def add(self, name: Any, arguments: Any) -> None:
        if isinstance(name, str) and name and self._name_len < MAX_TOOL_NAME:
            self._name.append(name[: MAX_TOOL_NAME - self._name_len])
            self._name_len += len(self._name[-1])
        if isinstance(arguments, str) and arguments:
            if self._arguments_len < MAX_TOOL_ARGUMENTS:
                self._arguments.append(arguments[: MAX_TOOL_ARGUMENTS - self._arguments_len])
            self._arguments_len += len(arguments)  # counted whole, kept up to the limit

    def to_dict(self) -> dict[str, str]:
        arguments = "".join(self._arguments)
        if self._arguments_len > MAX_TOOL_ARGUMENTS:
            arguments += f"… [{self._arguments_len - MAX_TOOL_ARGUMENTS} more characters not kept]"
        return {"name": "".join(self._name), "arguments": arguments}


class Exchange:
    """Records one request from arrival to its end (done, cancelled or error) and publishes each step.

    Event types are those of the one table in services/console/kinds.py, each event with "type",
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
        event_id: str | None = None,
        observer: OutcomeObserver | None = None,
        caller: str | None = None,
    ) -> None:
        self.hub = hub
        # The request id is the caller's X-Request-Id when it sent one; the console's records are
        # keyed by an id of the server's own (event_id), so two callers' equal ids never mix.
        self.id = event_id or request_id
        self.request_id = request_id
        self.conversation_id = conversation_id
        self.caller = caller  # the name of the caller's key, never the key
        self.remote_ip = remote_ip
        self.path = path
        self.route = path
        self._observer = observer
        self.started = time.monotonic()
        self.received = self.started
        self.stream = False
        # Timings (time.monotonic()) for the first-token split: the upstream asked, its first content
        # token received (first_token_at), that token written to the caller; and the end.
        self.upstream_sent: float | None = None
        self.first_written: float | None = None
        self.ended: float | None = None
        self.tokens = 0
        self.error_code: str | None = None
        self.first_token_at: float | None = None
        self.chunks = 0
        self.outcome: Outcome | None = None
        self.status: int | None = None
        self.upstream_model: str | None = None
        self.tool_calls: dict[int, ToolCallRecord] = {}

    def _emit(self, kind: str, **fields: Any) -> None:
        self.hub.publish({"type": kind, "id": self.id, "t": time.time(), **fields})

    def _elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 2)

    @property
    def upstream_first(self) -> float | None:
        return self.first_token_at

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
        self.stream = stream
        self._emit(
            "request",
            request_id=self.request_id,
            conversation_id=self.conversation_id,
            caller=self.caller,
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

    def layer_tool(self, *, name: str, arguments: str, result: str, ok: bool, ms: float, round: int) -> None:
        """One of the layer's own tools, run for the model: the console shows it, the caller never does."""
        self._emit("iss_tool", name=name[:64], arguments=arguments[:2000], result=result[:4000], ok=ok, ms=ms,
                   round=round)

    def token(self, text: str) -> None:
        """One content delta relayed to the caller (an empty string still marks the first token)."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.chunks += 1
        if text:
            self._emit("tokens", text=text)

    def tool_call(self, delta: Any) -> None:
        """Fold one streamed tool-call delta (or a whole call) into the calls shown when done.

        Bounded: an integer index (else the delta is left out of the record), at most
        MAX_TOOL_CALLS calls, names and arguments kept as parts joined once at the end and cut at
        MAX_TOOL_NAME / MAX_TOOL_ARGUMENTS characters.
        """
        if not isinstance(delta, dict):
            return
        index = delta.get("index", len(self.tool_calls))
        if not isinstance(index, int) or isinstance(index, bool):
            return
        call = self.tool_calls.get(index)
        if call is None:
            if len(self.tool_calls) >= MAX_TOOL_CALLS:
                return
            call = self.tool_calls[index] = ToolCallRecord()
        function = delta.get("function")
        if isinstance(function, dict):
            call.add(function.get("name"), function.get("arguments"))

    def end(self, ending: Ending) -> None:
        """Record how the request ended: the one place every outcome goes through, exactly once.

        Publishes the console's event for it ("done", "cancelled", "superseded" or "error") carrying
        the outcome, the status, the timings and the upstream's model, logs one line (its fields
        also as `extra`, for LOG_FORMAT=json) and tells the observer (the metrics).
        """
        if self.outcome is not None:
            return
        self.ended = time.monotonic()
        self.outcome = ending.outcome
        self.status = ending.status
        self.tokens = (ending.usage or {}).get("completion_tokens") or self.chunks
        if not isinstance(self.tokens, int) or isinstance(self.tokens, bool):
            self.tokens = self.chunks  # an upstream's usage is outside data: only an integer counts
        self.error_code = ending.error.code if ending.error is not None else None
        total_ms = self._elapsed_ms()
        common = {"outcome": ending.outcome.value, "status": ending.status, "ttft_ms": self.ttft_ms,
                  "total_ms": total_ms, "chunks": self.chunks, "upstream_model": self.upstream_model}
        extra = {**common, "upstream_ttft_ms": self._upstream_ttft_ms(), "finish_reason": ending.finish_reason,
                 "code": self.error_code}
        try:
            self._log_end(ending, total_ms, extra)
        finally:
            if self._observer is not None:
                try:
                    self._observer.outcome(self)
                except Exception:  # counting must never break an answer
                    log.exception("request %s: metrics not recorded", self.request_id)

    def _upstream_ttft_ms(self) -> float | None:
        if self.upstream_sent is None or self.first_token_at is None:
            return None
        return round((self.first_token_at - self.upstream_sent) * 1000, 2)

    def _log_end(self, ending: Ending, total_ms: float, extra: dict[str, Any]) -> None:
        common = {key: extra[key] for key in ("outcome", "status", "ttft_ms", "total_ms", "chunks", "upstream_model")}
        if ending.outcome is Outcome.DONE:
            generating_s = (time.monotonic() - self.first_token_at) if self.first_token_at is not None else 0.0
            counted = (ending.usage or {}).get("completion_tokens")
            completion_tokens = counted if isinstance(counted, int) and counted > 0 else self.chunks
            tps = round(completion_tokens / generating_s, 1) if generating_s > 0 else None
            self._emit(
                "done", finish_reason=ending.finish_reason, usage=ending.usage, tokens_per_second=tps,
                tool_calls=[self.tool_calls[index].to_dict() for index in sorted(self.tool_calls)] or None,
                **common,
            )
            log.info(
                "request %s conversation=%s done finish=%s ttft_ms=%s total_ms=%s chunks=%d",
                self.request_id, self.conversation_id, ending.finish_reason, self.ttft_ms, total_ms, self.chunks,
                extra=extra,
            )
        elif ending.outcome in (Outcome.CANCELLED, Outcome.SUPERSEDED):
            self._emit(ending.outcome.value, at_ms=total_ms, **common)
            why = "by caller" if ending.outcome is Outcome.CANCELLED else "by a newer request"
            log.info(
                "request %s conversation=%s %s %s at_ms=%s chunks=%d",
                self.request_id, self.conversation_id, ending.outcome.value, why, total_ms, self.chunks,
                extra=extra,
            )
        else:
            error = ending.error
            assert error is not None
            self._emit("error", message=error.message, where=ending.where, code=error.code, at_ms=total_ms,
                       **common)
            log.warning(
                "request %s conversation=%s %s where=%s status=%d code=%s: %s",
                self.request_id, self.conversation_id, ending.outcome.value, ending.where, error.status, error.code,
                error.message, extra=extra,
            )
