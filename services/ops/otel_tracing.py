"""The OpenTelemetry side of services/ops/tracing.py: imported only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

A request's spans are recorded, not made, while it runs. Its start reads the caller's `traceparent`,
draws the trace's ids and asks the sampler once; each upstream round draws its span id for the
`traceparent` it sends; a layer tool call notes its times. Only once the request ended, in a later turn
of the event loop (after its last words were written), are its finished spans made from that record
(the SDK's `ReadableSpan`) and handed to the BatchSpanProcessor, which exports them from its own
thread. What the chat path pays before a first token is a dict and a few ids (16 µs at the start,
11 µs a round, in process), where a span started through the SDK's tracer cost 53 and 67 µs there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.ops import tracing
from services.ops.tracing import RequestTrace, RoundTrace, traces_url

log = logging.getLogger("iss_llm.tracing")

MAX_CONTENT_CHARS = 64 * 1024  # captured text per attribute, when asked for
PROVIDER = "openai"  # the wire protocol spoken upstream (gen_ai.provider.name)
MAX_TOOL_SPANS = 32  # layer tool calls recorded per request (the tool rounds bound them further)


class OtelTracing:
    """The SDK's tracer provider with a BatchSpanProcessor and the OTLP/HTTP exporter, once per process."""

    def __init__(self, endpoint: str, service_name: str, capture_content: bool) -> None:
        self.url = traces_url(endpoint)
        self.ids = RandomIdGenerator()
        # The provider holds the resource, the sampler (OTEL_TRACES_SAMPLER and the SDK's other variables
        # apply) and the processor, which it flushes and shuts down.
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.processors: list[SpanProcessor] = [
            BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url, timeout=5))]
        self.provider.add_span_processor(self.processors[0])
        self.scope = InstrumentationScope("iss_llm")
        self.propagator = TraceContextTextMapPropagator()
        self.capture_content = capture_content

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Another processor for the finished spans (its on_end; on_start is never called)."""
        self.processors.append(processor)
        self.provider.add_span_processor(processor)

    def start(self, headers: Mapping[str, str], *, request_id: str, conversation_id: str | None, model: str,
              stream: bool, params: Mapping[str, Any]) -> RequestTrace:
        """The request's trace (its parent the caller's traceparent), made current for the request's task."""
        parent = self.propagator.extract(headers)
        parent_span = get_current_span(parent).get_span_context()
        trace_id = parent_span.trace_id if parent_span.is_valid else self.ids.generate_trace_id()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": model,
            "gen_ai.request.stream": stream, "iss_llm.request_id": request_id,
        }
        if conversation_id:
            attributes["gen_ai.conversation.id"] = conversation_id
        attributes.update(_request_attributes(params))
        name = f"chat {model}"
        # The sampler's decision (OTEL_TRACES_SAMPLER; parent-based by default), asked once: whether the
        # spans are made at the end, and the `sampled` flag of each upstream round's traceparent.
        sampling = self.provider.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes)
        if sampling.attributes:
            attributes.update(sampling.attributes)
        trace = _OtelTrace(self, _Recorded(name, SpanKind.SERVER, time.time_ns(), attributes,
                                           span_id=self.ids.generate_span_id()),
                           parent_span if parent_span.is_valid else None, trace_id,
                           sampling.decision.is_sampled(), model)
        trace.trace_state = sampling.trace_state or TraceState()
        tracing.bind(trace)
        return trace

    def make(self, trace: _OtelTrace) -> None:
        """The finished spans of a request that ended, from its record, handed to the processors.

        Made as the SDK's ReadableSpan directly rather than started and ended through a tracer: the
        attributes are this module's own (bounded, typed), the sampler was asked at the start, and the
        SDK's span machinery cost about 80 µs a span where this costs a few (measured in process).
        """
        if not trace.sampled:
            return  # never exported
        flags = TraceFlags(trace.flags)
        request = trace.request
        context = SpanContext(trace.trace, request.span_id, is_remote=False, trace_flags=flags,
                              trace_state=trace.trace_state)
        spans = [self._span(request, context, trace.parent, request.ended)]
        for child in trace.children:
            child_context = SpanContext(trace.trace, child.span_id or self.ids.generate_span_id(), is_remote=False,
                                        trace_flags=flags, trace_state=trace.trace_state)
            spans.append(self._span(child, child_context, context, request.ended))
        for span in spans:
            for processor in self.processors:
                processor.on_end(span)

    def _span(self, recorded: _Recorded, context: SpanContext, parent: SpanContext | None,
              default_end: int | None) -> ReadableSpan:
        return ReadableSpan(
            recorded.name, context=context, parent=parent, resource=self.provider.resource,
            attributes={**recorded.attributes, **recorded.extra} if recorded.extra else recorded.attributes,
            kind=recorded.kind,
            status=Status(StatusCode.ERROR, recorded.error) if recorded.error is not None else Status(StatusCode.UNSET),
            start_time=recorded.started,
            end_time=recorded.ended if recorded.ended is not None else default_end,
            instrumentation_scope=self.scope,
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)  # the last spans leave, off the loop

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Send what is queued now (blocking: for tests and shutdown, never the chat path)."""
        return self.provider.force_flush(timeout_millis)


@dataclass(slots=True)
class _Recorded:
    """One span as the request recorded it: made into the SDK's span once the request ended."""

    name: str
    kind: SpanKind
    started: int  # time.time_ns()
    attributes: dict[str, Any]
    span_id: int = 0  # drawn when it began (its traceparent may have left); 0: any
    ended: int | None = None
    error: str | None = None  # the status description, when it failed
    extra: dict[str, Any] = field(default_factory=dict)  # attributes learnt by the end


def _request_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, attribute in (("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
                            ("max_tokens", "gen_ai.request.max_tokens"),
                            ("max_completion_tokens", "gen_ai.request.max_tokens"),
                            ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                            ("presence_penalty", "gen_ai.request.presence_penalty"),
                            ("seed", "gen_ai.request.seed")):
        value = params.get(name)
        if _number(value):
            out[attribute] = value
    return out


INT64 = 2**63  # OTLP's integers are signed 64-bit: a caller's larger seed is left out, not an export error


def _number(value: Any) -> bool:
    """An attribute value OTLP carries: a float, or an int within signed 64 bits (never a bool)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, float) or (isinstance(value, int) and -INT64 <= value < INT64)


def _usage_attributes(usage: Mapping[str, Any] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if not isinstance(usage, Mapping):
        return out
    for name, attribute in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                            ("completion_tokens", "gen_ai.usage.output_tokens")):
        value = usage.get(name)
        if isinstance(value, int) and _number(value):
            out[attribute] = value
    return out


def _text(value: Any) -> str:
    """Captured content as JSON text, cut to MAX_CONTENT_CHARS; never raises (a request nested deeper than
    orjson writes, which str() would recurse through to a RecursionError, gets a placeholder)."""
    try:
        return orjson.dumps(value).decode()[:MAX_CONTENT_CHARS]
    except Exception:
        return "[not recorded: too deeply nested to write as JSON]"


class _OtelTrace:
    """One request's record: its own span, and its rounds' and tool calls' under it."""

    def __init__(self, tracing_: OtelTracing, request: _Recorded, parent: SpanContext | None, trace_id: int,
                 sampled: bool, model: str) -> None:
        self.tracing = tracing_
        self.request = request
        self.parent = parent  # the caller's span, from its traceparent
        self.trace = trace_id
        self.sampled = sampled
        random_trace_id = parent is None or bool(parent.trace_flags.random_trace_id)
        self.flags = ((TraceFlags.SAMPLED if sampled else 0)
                      | (TraceFlags.RANDOM_TRACE_ID if random_trace_id else 0))
        self.trace_state = TraceState()
        self.model = model
        self.children: list[_Recorded] = []
        self.rounds = 0
        self.tools = 0

    @property
    def trace_id(self) -> str | None:
        return f"{self.trace:032x}" if self.sampled else None

    def round(self, params: Mapping[str, Any]) -> RoundTrace:
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
        recorded = _Recorded(f"chat {model}", SpanKind.CLIENT, time.time_ns(), attributes,
                             span_id=self.tracing.ids.generate_span_id())
        self.children.append(recorded)
        # W3C trace context: version 00, the trace, this round's span, the flags (sampled, and the level-2
        # random-trace-id flag as the SDK's own propagator writes it).
        carrier = {"traceparent": f"00-{self.trace:032x}-{recorded.span_id:016x}-{self.flags:02x}"}
        if self.trace_state:
            carrier["tracestate"] = self.trace_state.to_header()
        tracing.send_upstream(carrier)
        return _OtelRound(recorded, self.tracing.capture_content)

    def tool(self, *, name: str, ok: bool, ms: float, round: int) -> None:
        if self.tools >= MAX_TOOL_SPANS:
            return
        self.tools += 1
        end = time.time_ns()
        self.children.append(_Recorded(
            f"execute_tool {name[:64]}", SpanKind.INTERNAL, end - int(ms * 1e6),
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name[:64],
             "gen_ai.tool.type": "function", "iss_llm.round": round},
            ended=end, error=None if ok else "the tool failed"))

    def end(self, *, outcome: str, status: int, response_model: str | None, usage: Mapping[str, Any] | None,
            finish_reason: str | None, ttft_s: float | None, error_code: str | None) -> None:
        request = self.request
        if request.ended is not None:
            return  # ended once already
        request.ended = time.time_ns()
        extra = request.extra
        extra["iss_llm.outcome"] = outcome
        extra["http.response.status_code"] = status
        if response_model:
            extra["gen_ai.response.model"] = response_model
        extra.update(_usage_attributes(usage))
        if finish_reason:
            extra["gen_ai.response.finish_reasons"] = [finish_reason]
        if ttft_s is not None:
            extra["gen_ai.response.time_to_first_chunk"] = ttft_s
        if error_code is not None:
            extra["error.type"] = error_code
            request.error = error_code
        tracing.send_upstream(None)
        try:
            asyncio.get_running_loop().call_soon(self._make)  # a later turn of the loop, off the request's path
        except RuntimeError:  # no loop (a test calling it directly): now
            self._make()

    def _make(self) -> None:
        try:
            self.tracing.make(self)
        except Exception as error:  # the SDK's failure costs this request's spans, never the server
            log.warning("could not record the trace of request %s: %s", self.request.attributes.get(
                "iss_llm.request_id"), type(error).__name__)


class _OtelRound:
    """What one upstream round streamed back, kept as its span's attributes to be."""

    def __init__(self, recorded: _Recorded, capture_content: bool) -> None:
        self.recorded = recorded
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
        code = getattr(error, "code", None)
        self.recorded.error = code if isinstance(code, str) else type(error).__name__
        self.recorded.extra["error.type"] = self.recorded.error

    def end(self) -> None:
        recorded = self.recorded
        if recorded.ended is not None:
            return
        recorded.ended = time.time_ns()
        extra = recorded.extra
        if self.model:
            extra["gen_ai.response.model"] = self.model
        extra.update(_usage_attributes(self.usage))
        if self.finish:
            extra["gen_ai.response.finish_reasons"] = self.finish
        if self.first is not None:
            extra["gen_ai.response.time_to_first_chunk"] = round(self.first - self.started, 6)
        if self.text is not None:
            extra["gen_ai.output.messages"] = _text(
                [{"role": "assistant", "parts": [{"type": "text", "content": "".join(self.text)}]}])
