"""One chat request's record: its timings and outcome, published step by step to the events hub."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from services.chat.endings import Ending, Outcome
from services.common.openai_format import MAX_MODEL_CHARS
from services.ops.tracing import NULL_TRACE, RequestTrace

log = logging.getLogger("iss_llm.chat")


class Publisher(Protocol):
    def publish(self, event: dict[str, Any]) -> None: ...


class OutcomeObserver(Protocol):
    """Told once when a request ended, with the exchange and its timings (a services.ops.recorder.Recorder)."""

    def outcome(self, record: Exchange) -> None: ...


# The console gets a request's tokens joined, at most this often: the first at once, then what came
# in each interval as one event (per-token events were hub work on the token path).
TOKEN_BATCH_S = 0.05
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
        trace: RequestTrace = NULL_TRACE,
        key_name: str | None = None,
    ) -> None:
        self.hub = hub
        self.trace = trace  # the request's span (OpenTelemetry), a no-op when tracing is off
        # The request id is the caller's X-Request-Id when it sent one; the console's records are
        # keyed by an id of the server's own (event_id), so two callers' equal ids never mix.
        self.id = event_id or request_id
        self.request_id = request_id
        self.conversation_id = conversation_id
        self.key_name = key_name  # the name of the caller's key, never the key
        self.remote_ip = remote_ip
        self.path = path
        self._observer = observer
        self.started = time.monotonic()
        self.stream = False
        # Timings (time.monotonic()), each set by this record's own methods: the request received
        # (started), the upstream asked (upstream_sent), its first content token received
        # (first_token_at), that token written to the caller (first_written); and the end.
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
        self._pending: list[str] = []  # tokens not yet published
        self._batch: asyncio.TimerHandle | None = None
        self._shown = False  # some text was published

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._pending:
            self._publish_tokens()  # what came before this event is shown before it
        self.hub.publish({"type": kind, "id": self.id, "t": time.time(), **fields})

    def _publish_tokens(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
        text = "".join(self._pending)
        self._pending.clear()
        self._shown = True
        self.hub.publish({"type": "tokens", "id": self.id, "t": time.time(), "text": text})

    @property
    def trace_id(self) -> str | None:
        """Its W3C trace id (32 hex digits), for the metrics' exemplars; None when not traced or sampled."""
        return self.trace.trace_id

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
        platform: str | None = None,
        left_out: list[str] | None = None,
    ) -> None:
        self.stream = stream
        self._emit(
            "request",
            request_id=self.request_id,
            conversation_id=self.conversation_id,
            key_name=self.key_name,
            remote_ip=self.remote_ip,
            path=self.path,
            model=model,
            requested_model=requested_model,
            stream=stream,
            messages=messages,
            params=params,
            upstream=upstream,
            platform=platform,
            left_out=left_out or None,  # the caller's fields kept from the upstream (names only)
        )

    def asked_upstream(self) -> None:
        """The request left for the upstream (or the built-in responder)."""
        self.upstream_sent = time.monotonic()

    def answered_by(self, model: Any) -> None:
        """The model the upstream says answered (its first chunk's, or the whole answer's), bounded."""
        if self.upstream_model is None and isinstance(model, str):
            self.upstream_model = model[:MAX_MODEL_CHARS]

    def first_token_written(self) -> None:
        """The first content token reached the caller's socket (once; later calls change nothing)."""
        if self.first_written is None and self.first_token_at is not None:
            self.first_written = time.monotonic()

    def iss(self, block: str, state: dict[str, Any] | None) -> None:
        self._emit("iss", block=block, state=state)

    def layer_tool(self, *, name: str, arguments: str, result: str, ok: bool, ms: float, round: int) -> None:
        """One of the layer's own tools, run for the model: the console shows it, the caller never does."""
        self._emit("iss_tool", name=name[:64], arguments=arguments[:2000], result=result[:4000], ok=ok, ms=ms,
                   round=round)
        self.trace.tool(name=name, ok=ok, ms=ms, round=round)

    def token(self, text: str) -> None:
        """One content delta relayed to the caller (an empty string still marks the first token)."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.chunks += 1
        if not text:
            return
        self._pending.append(text)
        if self._batch is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script driving the record): no batching
            loop = None
        if loop is None or not self._shown:
            self._publish_tokens()  # the first text shows at once
        else:
            self._batch = loop.call_later(TOKEN_BATCH_S, self._publish_tokens)

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
        if self._pending:
            self._publish_tokens()
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
            self._trace_end(ending)
        finally:
            if self._observer is not None:
                try:
                    self._observer.outcome(self)
                except Exception:  # counting must never break an answer
                    log.exception("request %s: metrics not recorded", self.request_id)

    def _trace_end(self, ending: Ending) -> None:
        try:
            self.trace.end(outcome=ending.outcome.value, status=ending.status, response_model=self.upstream_model,
                           usage=ending.usage, finish_reason=ending.finish_reason,
                           ttft_s=None if self.first_token_at is None else round(self.first_token_at - self.started, 6),
                           error_code=self.error_code)
        except Exception:  # a trace must never break an answer
            log.exception("request %s: trace not recorded", self.request_id)

    def _upstream_ttft_ms(self) -> float | None:
        if self.upstream_sent is None or self.first_token_at is None:
            return None
        return round((self.first_token_at - self.upstream_sent) * 1000, 2)

    def _log_end(self, ending: Ending, total_ms: float, extra: dict[str, Any]) -> None:
        """The request's one log line (the access log leaves chat requests to it): its outcome, status,
        path, address and timings, as text and as `extra` fields."""
        common = {key: extra[key] for key in ("outcome", "status", "ttft_ms", "total_ms", "chunks", "upstream_model")}
        extra = {**extra, "method": "POST", "path": self.path, "remote_ip": self.remote_ip, "duration_ms": total_ms}
        if ending.outcome is Outcome.DONE:
            generating_s = (time.monotonic() - self.first_token_at) if self.first_token_at is not None else 0.0
            counted = (ending.usage or {}).get("completion_tokens")
            completion_tokens = counted if isinstance(counted, int) and counted > 0 else self.chunks
            # Only a streamed answer has a generation time to divide by: a whole answer's "first
            # token" arrives with its last.
            tps = round(completion_tokens / generating_s, 1) if self.stream and generating_s > 0 else None
            self._emit(
                "done", finish_reason=ending.finish_reason, usage=ending.usage, tokens_per_second=tps,
                tool_calls=[self.tool_calls[index].to_dict() for index in sorted(self.tool_calls)] or None,
                **common,
            )
            log.info(
                "request %s %d POST %s (%s) conversation=%s done finish=%s ttft_ms=%s total_ms=%s chunks=%d",
                self.request_id, ending.status, self.path, self.remote_ip, self.conversation_id,
                ending.finish_reason, self.ttft_ms, total_ms, self.chunks, extra=extra,
            )
        elif ending.outcome in (Outcome.CANCELLED, Outcome.SUPERSEDED):
            self._emit(ending.outcome.value, at_ms=total_ms, **common)
            why = "by caller" if ending.outcome is Outcome.CANCELLED else "by a newer request"
            log.info(
                "request %s %d POST %s (%s) conversation=%s %s %s at_ms=%s chunks=%d",
                self.request_id, ending.status, self.path, self.remote_ip, self.conversation_id,
                ending.outcome.value, why, total_ms, self.chunks, extra=extra,
            )
        else:
            error = ending.error
            assert error is not None
            self._emit("error", message=error.message, where=ending.where, code=error.code, at_ms=total_ms,
                       **common)
            log.log(
                logging.ERROR if ending.status >= 500 else logging.WARNING,
                "request %s %d POST %s (%s) conversation=%s %s where=%s code=%s total_ms=%s: %s",
                self.request_id, ending.status, self.path, self.remote_ip, self.conversation_id,
                ending.outcome.value, ending.where, error.code, total_ms, error.message, extra=extra,
            )
