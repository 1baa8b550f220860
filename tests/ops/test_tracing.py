"""OpenTelemetry traces received by a real OTLP/HTTP receiver on loopback, decoded with opentelemetry-proto."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ROOT, open_stream, post_json, sse_events

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SECRET_WORDS = "my-private-question-about-paris"
QUESTION = [{"role": "user", "content": f"{SECRET_WORDS}: when can I see the ISS from Paris?"}]


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status_code: int


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass
class OtlpReceiver:
    """POST /v1/traces as an OpenTelemetry collector takes it (protobuf), spans kept decoded."""

    spans: list[Span] = field(default_factory=list)
    posts: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def traces(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        async with self._arrived:
            self.posts += 1
            for resource_spans in message.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(Span(
                            span.name, span.kind, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                            {kv.key: _value(kv.value) for kv in span.attributes}, span.status.code))
            self._arrived.notify_all()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Span]:
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.spans) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.spans


@pytest.fixture
def receiver(io_loop) -> OtlpReceiver:
    otlp = OtlpReceiver()
    io_loop.run_sync(otlp.start)
    yield otlp
    io_loop.run_sync(otlp.close)


@pytest.fixture
def capture() -> bool:
    return False


@pytest.fixture
def overrides(receiver, capture) -> dict:
    return {"otel_endpoint": f"http://127.0.0.1:{receiver.port}", "otel_capture_content": capture}


async def _flush(app) -> None:
    """Send the queued spans now rather than at the processor's next scheduled export."""
    assert await asyncio.to_thread(app.services.tracing.flush)


SERVER, CLIENT, INTERNAL = 2, 3, 1


async def test_a_tool_using_request_arrives_as_one_span_tree_under_the_callers_trace(
    app, base_url, upstream, receiver
):
    upstream.scripted_tools = True
    response = await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True},
                               headers={"traceparent": TRACEPARENT, "conversation-id": "conv-traced"})
    assert sse_events(response.body)[-1] == "[DONE]"
    await _flush(app)
    spans = await receiver.wait_for(4)

    assert {span.trace_id for span in spans} == {CALLER_TRACE}, "the caller's trace continues"
    (request,) = [span for span in spans if span.kind == SERVER]
    assert request.parent_id == CALLER_SPAN
    assert request.name == "chat m"
    assert request.attributes["iss_llm.request_id"] == response.headers["X-Request-Id"]
    assert request.attributes["gen_ai.conversation.id"] == "conv-traced"
    assert request.attributes["gen_ai.operation.name"] == "chat"
    assert request.attributes["gen_ai.request.model"] == "m"
    assert request.attributes["gen_ai.response.model"] == "m"
    assert request.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert request.attributes["gen_ai.response.time_to_first_chunk"] > 0

    rounds = [span for span in spans if span.kind == CLIENT]
    assert len(rounds) == 2 and all(span.parent_id == request.span_id for span in rounds)
    assert [span.attributes["iss_llm.round"] for span in rounds] == [0, 1]
    assert rounds[0].attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    (tool,) = [span for span in spans if span.kind == INTERNAL]
    assert tool.name == "execute_tool iss_passes" and tool.parent_id == request.span_id
    assert tool.attributes["gen_ai.tool.name"] == "iss_passes"

    # Each upstream request carried its own round's span as its parent.
    sent = [{name.lower(): value for name, value in headers.items()}["traceparent"]
            for headers in list(upstream.headers)[-2:]]
    assert sent == [f"00-{CALLER_TRACE}-{span.span_id}-01" for span in rounds]

    # No prompt or answer text unless asked.
    text = repr([span.attributes for span in spans])
    assert SECRET_WORDS not in text and "gen_ai.input.messages" not in text


async def test_usage_and_the_upstream_model_are_on_the_spans(app, base_url, upstream, receiver):
    response = await post_json(base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "stream": True, "stream_options": {"include_usage": True},
                                          "temperature": 0.3})
    assert response.code == 200
    await _flush(app)
    spans = await receiver.wait_for(2)
    (request,) = [span for span in spans if span.kind == SERVER]
    assert not request.parent_id, "no traceparent from the caller: a new trace"
    (upstream_round,) = [span for span in spans if span.kind == CLIENT]
    for span in (request, upstream_round):
        assert span.attributes["gen_ai.usage.input_tokens"] == 42
        assert span.attributes["gen_ai.usage.output_tokens"] == upstream.tokens
        assert span.attributes["gen_ai.request.temperature"] == 0.3
        assert span.attributes["gen_ai.response.model"] == "m"


async def test_an_upstream_failure_marks_the_spans_as_errors(app, base_url, upstream, receiver):
    response = await post_json(base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "stream": True, "x_fake": {"fault": "status", "status": 503}})
    assert response.code == 502
    await _flush(app)
    spans = await receiver.wait_for(2)
    (request,) = [span for span in spans if span.kind == SERVER]
    assert request.status_code == 2 and request.attributes["error.type"] == "upstream_error"  # STATUS_CODE_ERROR
    assert all(span.status_code == 2 for span in spans if span.kind == CLIENT)


async def test_a_caller_who_leaves_is_not_an_upstream_failure_on_the_round_span(app, base_url, upstream, receiver):
    _reader, writer, _ = await open_stream(
        base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                   "x_fake": {"tokens": 400, "gap": 0.02}}, events=3)
    writer.close()
    assert await upstream.wait_streams_closed(5.0)
    await _flush(app)
    spans = await receiver.wait_for(2)
    (upstream_round,) = [span for span in spans if span.kind == CLIENT]
    assert upstream_round.status_code != 2, upstream_round.attributes  # not STATUS_CODE_ERROR
    assert "error.type" not in upstream_round.attributes


def _made() -> Any:
    """A span processor that counts the finished spans handed to it."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Made(SpanProcessor):
        count = 0

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.count += 1

        def on_end(self, span: Any) -> None:
            self.count += 1

    return Made()


async def test_no_span_is_made_before_the_answer_ended(app, base_url, upstream, receiver):
    """The span work (tens of microseconds a span through the SDK's tracer) stays off the first token's
    path: while the answer streams, the ids are drawn (the round's traceparent already left) but no span
    was started or made yet."""
    made = _made()
    app.services.tracing.add_span_processor(made)
    reader, writer, seen = await open_stream(
        base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                   "x_fake": {"tokens": 5, "gap": 0.05}}, headers={"traceparent": TRACEPARENT}, events=2)
    assert b'"content"' in seen, seen  # the first content token reached the caller
    sent = {name.lower(): value for name, value in list(upstream.headers)[-1].items()}["traceparent"]
    assert sent.startswith(f"00-{CALLER_TRACE}-") and sent.endswith("-01")
    assert made.count == 0, "a span was made while the answer streamed"
    rest = b""
    while b"[DONE]" not in rest:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, rest
        rest += chunk
    writer.close()
    await _flush(app)
    spans = await receiver.wait_for(2)
    assert made.count == 2
    (upstream_round,) = [span for span in spans if span.kind == CLIENT]
    assert sent == f"00-{CALLER_TRACE}-{upstream_round.span_id}-01", "the span has the id its traceparent sent"


async def test_a_caller_trace_not_sampled_stays_unsampled_upstream_and_unexported(app, base_url, upstream, receiver):
    response = await post_json(base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "stream": True},
                               headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})
    assert response.code == 200
    sent = {name.lower(): value for name, value in list(upstream.headers)[-1].items()}["traceparent"]
    assert sent.startswith(f"00-{CALLER_TRACE}-") and sent.endswith("-00"), sent
    await _flush(app)
    assert receiver.spans == []


async def test_the_metrics_exemplars_carry_the_requests_trace_id(app, base_url, upstream, receiver):
    from tests.ops.test_metrics_exemplars import openmetrics_samples, with_exemplars

    response = await post_json(base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "stream": True}, headers={"traceparent": TRACEPARENT})
    assert response.code == 200
    samples = await openmetrics_samples(base_url)
    [ttft] = with_exemplars(samples, "iss_llm_chat_ttft_seconds_bucket")
    assert ttft.exemplar.labels["trace_id"] == CALLER_TRACE
    assert ttft.exemplar.labels["request_id"] == response.headers["X-Request-Id"]
    await _flush(app)
    spans = await receiver.wait_for(2)
    assert {span.trace_id for span in spans} == {CALLER_TRACE}


async def test_a_seed_beyond_64_bits_is_left_off_the_span_without_an_export_error(app, base_url, upstream, receiver,
                                                                                   caplog):
    caplog.set_level(logging.ERROR)
    response = await post_json(base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "stream": True, "seed": 2**64 - 1, "temperature": 0.5})
    assert response.code == 200
    await _flush(app)
    spans = await receiver.wait_for(2)
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR] == []
    (request,) = [span for span in spans if span.kind == SERVER]
    assert "gen_ai.request.seed" not in request.attributes and request.attributes["gen_ai.request.temperature"] == 0.5


async def test_a_new_trace_sends_the_sampled_and_random_flags_upstream(app, base_url, upstream, receiver):
    response = await post_json(base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "stream": True})
    assert response.code == 200
    sent = {name.lower(): value for name, value in list(upstream.headers)[-1].items()}["traceparent"]
    assert sent.endswith("-03"), sent  # sampled, and a random trace id (W3C level 2), as the SDK writes it


@pytest.mark.parametrize("capture", [True, False])
async def test_a_request_too_deep_to_forward_is_a_400_with_content_capture_on_or_off(app, base_url, upstream, receiver,
                                                                                     capture):
    raw = (b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi","x_extra":'
           + b"[" * 1000 + b"]" * 1000 + b"}]}")
    response = await post_json(base_url, None, raw=raw)
    assert response.code == 400, (response.code, response.body[:300])


@pytest.mark.parametrize("capture", [True])
async def test_content_is_captured_only_when_asked(app, base_url, upstream, receiver, capture):
    await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True})
    await _flush(app)
    spans = await receiver.wait_for(2)
    (upstream_round,) = [span for span in spans if span.kind == CLIENT]
    assert SECRET_WORDS in upstream_round.attributes["gen_ai.input.messages"]
    assert "station" in upstream_round.attributes["gen_ai.output.messages"]


def test_with_tracing_off_the_chat_path_runs_without_opentelemetry():
    """opentelemetry made unimportable: the server builds and answers a chat request all the same."""
    script = (
        "import sys, asyncio, socket\n"
        "sys.modules['opentelemetry'] = None  # any import of it now fails\n"
        "from tornado.httpclient import AsyncHTTPClient\n"
        "from config import Settings\n"
        "from app import make_app, make_server\n"
        "async def main():\n"
        "    settings = Settings(llm_backend='builtin', iss_sources=(), console_enabled=False)\n"
        "    app = make_app(settings)\n"
        "    server = make_server(app, settings)\n"
        "    sock = socket.socket(); sock.bind(('127.0.0.1', 0)); sock.listen(8); sock.setblocking(False)\n"
        "    server.add_socket(sock)\n"
        "    url = 'http://127.0.0.1:%d/v1/chat/completions' % sock.getsockname()[1]\n"
        "    body = b'{\"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}'\n"
        "    response = await AsyncHTTPClient().fetch(url, method='POST', body=body,\n"
        "                                             headers={'Content-Type': 'application/json'})\n"
        "    assert response.code == 200 and response.body.endswith(b'data: [DONE]\\n\\n'), response.body\n"
        "    server.stop()\n"
        "    await app.services.close()\n"
        "    print('answered')\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "answered" in result.stdout, result.stderr[-2000:]
