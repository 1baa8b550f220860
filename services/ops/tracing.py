"""OpenTelemetry traces of the chat path: off (and never imported) unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

One span per chat request (SERVER, "chat <model>"), its parent the caller's W3C `traceparent` when
it sends one; under it one span per upstream round (CLIENT, "chat <model>", each round's
`traceparent` sent upstream) and one per layer tool call ("execute_tool <name>"). Attributes follow
the OpenTelemetry GenAI semantic conventions: gen_ai.operation.name, gen_ai.provider.name,
gen_ai.request.model, gen_ai.response.model, gen_ai.usage.input_tokens / output_tokens,
gen_ai.response.finish_reasons, gen_ai.response.time_to_first_chunk (seconds),
gen_ai.conversation.id; the request id as `iss_llm.request_id`. Prompt and answer text
(gen_ai.input.messages / gen_ai.output.messages, on the round spans) only with
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true.

This module is what the chat path sees: the protocols, their no-op objects (tracing off: the
opentelemetry packages are never imported) and the request's context. services/ops/otel_tracing.py is
the OpenTelemetry side: it records while a request runs and makes the SDK's spans once it ended, which
leave through a BatchSpanProcessor (a queue and a thread of the SDK's, OTLP over HTTP/protobuf), so
the chat path never waits on the SDK or the collector.

Upstream rounds: `current().round()` is what a backend wrapper calls around each upstream call
(services/upstream/traced.py); `upstream_headers()` is what the HTTP transport adds to the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Protocol


class RoundTrace(Protocol):
    """One upstream call's span, told what came back."""

    def chunk(self, data: Any) -> None: ...

    def completion(self, data: Any) -> None: ...

    def fail(self, error: BaseException) -> None: ...

    def end(self) -> None: ...


class RequestTrace(Protocol):
    """One chat request's span, and the rounds and tool calls under it."""

    @property
    def trace_id(self) -> str | None:
        """The trace's id (32 hex digits) when the request is sampled, else None."""
        ...

    def round(self, params: Mapping[str, Any]) -> RoundTrace: ...

    def tool(self, *, name: str, ok: bool, ms: float, round: int) -> None: ...

    def end(self, *, outcome: str, status: int, response_model: str | None, usage: Mapping[str, Any] | None,
            finish_reason: str | None, ttft_s: float | None, error_code: str | None) -> None: ...


class _NullRound:
    def chunk(self, data: Any) -> None:
        pass

    def completion(self, data: Any) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass

    def end(self) -> None:
        pass


class _NullTrace:
    trace_id = None

    def round(self, params: Mapping[str, Any]) -> RoundTrace:
        return NULL_ROUND

    def tool(self, *, name: str, ok: bool, ms: float, round: int) -> None:
        pass

    def end(self, **_: Any) -> None:
        pass


NULL_ROUND: RoundTrace = _NullRound()
NULL_TRACE: RequestTrace = _NullTrace()

# The request being traced, and the upstream round under way, for the backend wrapper and the
# transport: set in the request's task, seen by the tasks it starts.
_request: ContextVar[RequestTrace] = ContextVar("iss_llm_trace", default=NULL_TRACE)
_round_headers: ContextVar[dict[str, str] | None] = ContextVar("iss_llm_round_headers", default=None)


def current() -> RequestTrace:
    return _request.get()


def bind(trace: RequestTrace) -> None:
    """Make `trace` the current request's (in its task, and the tasks it starts from now on)."""
    _request.set(trace)


def upstream_headers() -> dict[str, str] | None:
    """The W3C trace context of the upstream round under way (`traceparent`), or None."""
    return _round_headers.get()


def send_upstream(headers: dict[str, str] | None) -> None:
    """The trace context the next upstream request carries (None: none)."""
    _round_headers.set(headers)


class Tracing(Protocol):
    def start(self, headers: Mapping[str, str], *, request_id: str, conversation_id: str | None, model: str,
              stream: bool, params: Mapping[str, Any]) -> RequestTrace: ...

    async def close(self) -> None: ...


class NoTracing:
    """Tracing off: nothing recorded, nothing imported."""

    def start(self, headers: Mapping[str, str], **_: Any) -> RequestTrace:
        return NULL_TRACE

    async def close(self) -> None:
        pass


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of OTEL_EXPORTER_OTLP_ENDPOINT (the base, to which v1/traces is added)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"
