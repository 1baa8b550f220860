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

Spans leave through a BatchSpanProcessor (a queue and a thread of the SDK's, OTLP over HTTP/protobuf):
the chat path only records attributes, never waits on the collector. With tracing off, the chat path
calls the no-op objects below and the opentelemetry packages are never imported.

Upstream rounds: `traced_round()` is what a backend wrapper calls around each upstream call
(services/upstream/traced.py); `upstream_headers()` is what the HTTP transport adds to the request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

MAX_CONTENT_CHARS = 64 * 1024  # captured text per attribute, when asked for
PROVIDER = "openai"  # the wire protocol spoken upstream (gen_ai.provider.name)


class RoundTrace(Protocol):
    """One upstream call's span, told what came back."""

    def chunk(self, data: Any) -> None: ...

    def completion(self, data: Any) -> None: ...

    def fail(self, error: BaseException) -> None: ...

    def end(self) -> None: ...


class RequestTrace(Protocol):
    """One chat request's span, and the rounds and tool calls under it."""

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


def upstream_headers() -> dict[str, str] | None:
    """The W3C trace context of the upstream round under way (`traceparent`), or None."""
    return _round_headers.get()


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


def make_tracing(endpoint: str | None, service_name: str = "iss-llm", capture_content: bool = False) -> Tracing:
    """OtelTracing exporting to `endpoint` (OTLP/HTTP), or NoTracing when it is not set."""
    if not endpoint:
        return NoTracing()
    return OtelTracing(endpoint, service_name, capture_content)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of OTEL_EXPORTER_OTLP_ENDPOINT (the base, to which v1/traces is added)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class OtelTracing:
    """The SDK's tracer provider with a BatchSpanProcessor and the OTLP/HTTP exporter, once per process."""

    def __init__(self, endpoint: str, service_name: str, capture_content: bool) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.url = traces_url(endpoint)
        self.provider: TracerProvider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url, timeout=5)))
        self.tracer: Tracer = self.provider.get_tracer("iss_llm")
        self.propagator = TraceContextTextMapPropagator()
        self.capture_content = capture_content

    def start(self, headers: Mapping[str, str], *, request_id: str, conversation_id: str | None, model: str,
              stream: bool, params: Mapping[str, Any]) -> RequestTrace:
        """The request's span (its parent the caller's traceparent), made current for the request's task."""
        from opentelemetry.trace import SpanKind

        parent = self.propagator.extract(headers)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": model,
            "gen_ai.request.stream": stream, "iss_llm.request_id": request_id,
        }
        if conversation_id:
            attributes["gen_ai.conversation.id"] = conversation_id
        attributes.update(_request_attributes(params))
        span = self.tracer.start_span(f"chat {model}", context=parent, kind=SpanKind.SERVER, attributes=attributes)
        trace = _OtelTrace(self, span, model)
        _request.set(trace)
        return trace

    async def close(self) -> None:
        import asyncio

        await asyncio.to_thread(self.provider.shutdown)  # the last spans leave, off the loop

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Send what is queued now (blocking: for tests and shutdown, never the chat path)."""
        return self.provider.force_flush(timeout_millis)


def _request_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, attribute in (("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
                            ("max_tokens", "gen_ai.request.max_tokens"),
                            ("max_completion_tokens", "gen_ai.request.max_tokens"),
                            ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                            ("presence_penalty", "gen_ai.request.presence_penalty"),
                            ("seed", "gen_ai.request.seed")):
        value = params.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[attribute] = value
    return out


def _usage_attributes(usage: Mapping[str, Any] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if not isinstance(usage, Mapping):
        return out
    for name, attribute in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                            ("completion_tokens", "gen_ai.usage.output_tokens")):
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[attribute] = value
    return out


def _text(value: Any) -> str:
    import orjson

    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = str(value)
    return text[:MAX_CONTENT_CHARS]


class _OtelTrace:
    def __init__(self, tracing: OtelTracing, span: Span, model: str) -> None:
        self.tracing = tracing
        self.span = span
        self.model = model
        self.rounds = 0

    def round(self, params: Mapping[str, Any]) -> RoundTrace:
        from opentelemetry.trace import SpanKind, set_span_in_context

        model = params.get("model") if isinstance(params.get("model"), str) else self.model
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER,
                                      "gen_ai.request.model": model, "iss_llm.round": self.rounds,
                                      **_request_attributes(params)}
        tools = params.get("tools")
        if isinstance(tools, list):
            attributes["iss_llm.tools_offered"] = len(tools)
        if self.tracing.capture_content:
            attributes["gen_ai.input.messages"] = _text(params.get("messages"))
        self.rounds += 1
        span = self.tracing.tracer.start_span(f"chat {model}", context=set_span_in_context(self.span),
                                              kind=SpanKind.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        self.tracing.propagator.inject(carrier, context=set_span_in_context(span))
        _round_headers.set(carrier)
        return _OtelRound(span, self.tracing.capture_content)

    def tool(self, *, name: str, ok: bool, ms: float, round: int) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        end = time.time_ns()
        span = self.tracing.tracer.start_span(
            f"execute_tool {name[:64]}", context=set_span_in_context(self.span), kind=SpanKind.INTERNAL,
            start_time=end - int(ms * 1e6),
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name[:64],
                        "gen_ai.tool.type": "function", "iss_llm.round": round},
        )
        if not ok:
            span.set_status(Status(StatusCode.ERROR, "the tool failed"))
        span.end(end_time=end)

    def end(self, *, outcome: str, status: int, response_model: str | None, usage: Mapping[str, Any] | None,
            finish_reason: str | None, ttft_s: float | None, error_code: str | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        span.set_attribute("iss_llm.outcome", outcome)
        span.set_attribute("http.response.status_code", status)
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        for attribute, value in _usage_attributes(usage).items():
            span.set_attribute(attribute, value)
        if finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if ttft_s is not None:
            span.set_attribute("gen_ai.response.time_to_first_chunk", ttft_s)
        if error_code is not None:
            span.set_attribute("error.type", error_code)
            span.set_status(Status(StatusCode.ERROR, error_code))
        span.end()
        _round_headers.set(None)


class _OtelRound:
    """What one upstream round streamed back, as attributes of its span."""

    def __init__(self, span: Span, capture_content: bool) -> None:
        self.span = span
        self.started = time.monotonic()
        self.first: float | None = None
        self.model: str | None = None
        self.usage: Mapping[str, Any] | None = None
        self.finish: list[str] = []
        self.text: list[str] | None = [] if capture_content else None

    def chunk(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if self.model is None and isinstance(data.get("model"), str):
            self.model = data["model"][:256]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
                if self.first is None:
                    self.first = time.monotonic()
                if self.text is not None and isinstance(delta.get("content"), str):
                    self.text.append(delta["content"])
            if isinstance(choice.get("finish_reason"), str) and len(self.finish) < 8:
                self.finish.append(choice["finish_reason"][:64])

    def completion(self, data: Any) -> None:
        """A whole (non-streamed) answer."""
        if not isinstance(data, dict):
            return
        self.first = time.monotonic()
        if isinstance(data.get("model"), str):
            self.model = data["model"][:256]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str) and len(self.finish) < 8:
                self.finish.append(choice["finish_reason"][:64])
            message = choice.get("message") if isinstance(choice, dict) else None
            if self.text is not None and isinstance(message, dict) and isinstance(message.get("content"), str):
                self.text.append(message["content"])

    def fail(self, error: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        code = getattr(error, "code", None)
        self.span.set_attribute("error.type", code if isinstance(code, str) else type(error).__name__)
        self.span.set_status(Status(StatusCode.ERROR, code if isinstance(code, str) else type(error).__name__))

    def end(self) -> None:
        span = self.span
        if self.model:
            span.set_attribute("gen_ai.response.model", self.model)
        for attribute, value in _usage_attributes(self.usage).items():
            span.set_attribute(attribute, value)
        if self.finish:
            span.set_attribute("gen_ai.response.finish_reasons", self.finish)
        if self.first is not None:
            span.set_attribute("gen_ai.response.time_to_first_chunk", round(self.first - self.started, 6))
        if self.text is not None:
            span.set_attribute("gen_ai.output.messages",
                               _text([{"role": "assistant", "parts": [{"type": "text",
                                                                        "content": "".join(self.text)}]}]))
        span.end()
