"""POST /chat/completions and /v1/chat/completions: parse, authorize, add the ISS block, stream."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import orjson
import tornado.web
from tornado.iostream import StreamClosedError

from handlers.base import ApiHandler
from services.context import inject, iss_block
from services.exchange import Exchange
from services.futures import retrieve_outcome
from services.iss.state import IssState
from services.llm.base import UpstreamError
from services.openai_format import (
    DONE_EVENT,
    KEEPALIVE_EVENT,
    ApiError,
    completion_from_chunks,
    error_body,
    parse_chat_request,
    redact,
    sse_event,
    sse_json,
    text_chunks,
)

log = logging.getLogger("iss_llm.chat")

_CONVERSATION_ID = re.compile(r"[^A-Za-z0-9._:\-]")


class _CallerGone(Exception):
    """The caller closed the connection; nothing more can be written."""


# An oversized body is read to its end and thrown away, so the caller gets its 413 rather than a
# reset connection; past this much it is cut off instead.
_DISCARD_LIMIT = 64 * 1024 * 1024


@tornado.web.stream_request_body
class ChatHandler(ApiHandler):
    """OpenAI-compatible chat completions, streamed as SSE or answered as one JSON object."""

    def initialize(self, services: Any) -> None:
        self.config = services.settings
        self.tracker = services.tracker
        self.backend = services.backend
        self.hub = services.hub
        self.inflight = services.inflight
        self.server_api_key = services.settings.server_api_key
        self._secrets = (services.settings.openai_api_key, services.settings.server_api_key)
        self._body = bytearray()
        self._too_large = False
        self._work: asyncio.Future[None] | None = None
        self._gone = False
        self._shutting_down = False
        self._sse_started = False
        self._flush_soon = False
        self._flushing: asyncio.Future[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_sent = 0.0

    def prepare(self) -> None:
        if self.request.method != "POST":
            return
        if self.inflight.draining:
            raise ApiError(503, "This server is shutting down; send the request again.",
                           type="server_error", code="server_shutting_down")
        self.check_bearer()
        length = self.request.headers.get("Content-Length", "")
        declared = int(length) if length.isdigit() else 0
        expects_continue = self.request.headers.get("Expect", "").lower() == "100-continue"
        if declared > self.config.max_body_bytes and (expects_continue or declared > _DISCARD_LIMIT):
            # The caller has not sent the body yet (or it is absurdly large): refuse before reading it.
            raise self._too_large_error()
        self.request.connection.set_max_body_size(max(_DISCARD_LIMIT, self.config.max_body_bytes))

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._body += chunk
        if len(self._body) > self.config.max_body_bytes:
            self._too_large = True
            self._body = bytearray()

    def _too_large_error(self) -> ApiError:
        return ApiError(
            413,
            f"The request body is larger than the limit of {self.config.max_body_bytes} bytes.",
            code="request_too_large",
        )

    async def post(self) -> None:
        if self._too_large:
            raise self._too_large_error()
        request = parse_chat_request(bytes(self._body))
        self._body = bytearray()
        self.request_id = f"req_{uuid.uuid4().hex[:24]}"
        self.set_header("X-Request-Id", self.request_id)
        conversation = self.request.headers.get("conversation-id")
        exchange = Exchange(
            self.hub,
            request_id=self.request_id,
            conversation_id=_CONVERSATION_ID.sub("", conversation)[:128] if conversation else None,
            remote_ip=self.request.remote_ip,
            path=self.request.path,
        )
        model = self.config.llm_model or request.model or self.config.default_model
        # The outcome line (done, cancelled, error) carries the conversation id at INFO; this one is
        # for following a request step by step.
        log.debug(
            "request %s conversation=%s model=%s stream=%s messages=%d",
            self.request_id, exchange.conversation_id, model, request.stream, len(request.messages),
        )
        exchange.request(
            model=model,
            requested_model=request.model,
            stream=request.stream,
            messages=request.messages,
            params=request.params,
            upstream=self.backend.describe(),
        )
        self.inflight.enter(self)
        try:
            state = await self.tracker.current()
            if self._gone or self._shutting_down:
                await self._ended_early(exchange)
                return
            messages = request.messages
            if self.config.iss_inject != "off":
                block = iss_block(state)
                exchange.iss(block, state.to_dict() if state is not None else None)
                messages = inject(messages, block, self.config.iss_inject)
            params = {**request.params, "model": model, "messages": messages}
            if request.stream:
                work: Awaitable[None] = self._stream(params, state, exchange, request.include_usage)
            else:
                work = self._complete(params, state, exchange)
            self._work = asyncio.ensure_future(work)
            await asyncio.wait({self._work})
            if self._work.cancelled():
                await self._ended_early(exchange)
            elif self._work.exception() is not None:
                await self._internal_error(exchange, self._work.exception())
        finally:
            self._stop_keepalive()
            self.inflight.leave(self, exchange.outcome)

    def on_connection_close(self) -> None:
        # Tornado's own handling ends the wait for a body the caller stopped sending.
        super().on_connection_close()
        # The caller went away: stop the upstream at once, so nothing more is generated or billed.
        self._gone = True
        if self._work is not None and not self._work.done():
            self._work.cancel()

    def end_for_shutdown(self) -> None:
        """The drain timeout passed: end this answer now, with an error the caller can see."""
        self._shutting_down = True
        if self._work is not None and not self._work.done():
            self._work.cancel()

    async def _ended_early(self, exchange: Exchange) -> None:
        """The work stopped before its end: the caller left, or the server is shutting down."""
        if not self._shutting_down or self._gone:
            exchange.cancelled()
            return
        error = UpstreamError(503, "This server is shutting down; the answer was cut short.",
                              code="server_shutting_down", type="server_error")
        exchange.failed(status=error.status, message=error.message, where="server shutdown", code=error.code,
                        outcome="shutdown")
        await self._send_error(error)

    async def _internal_error(self, exchange: Exchange, exc: BaseException) -> None:
        """A bug, not the caller's or the upstream's fault: the log gets the traceback, the caller a clean error."""
        log.error("request %s failed inside this server", exchange.id, exc_info=exc)
        error = UpstreamError(500, "The server had an error while processing your request.",
                              code="internal_error", type="server_error")
        exchange.failed(status=error.status, message=error.message, where="server", code=error.code)
        await self._send_error(error)

    async def _send_error(self, error: UpstreamError) -> None:
        """The error as an HTTP status, or as an SSE error event and [DONE] once the stream began."""
        if self._finished or self._gone:
            return
        if self._sse_started:
            payload = sse_json(error_body(error.message, type=error.type, code=error.code))
            try:
                await self._send(payload + DONE_EVENT)
            except _CallerGone:
                pass
            return
        self.send_api_error(ApiError(error.status, error.message, type=error.type, code=error.code))

    # --- streamed answers -------------------------------------------------------------------

    def _start_sse(self) -> None:
        if self._sse_started:
            return
        self._sse_started = True
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def _send(self, data: bytes) -> None:
        """Write and flush now; raises _CallerGone when the caller has left."""
        await self._flushed()
        self.write(data)
        self._flush_soon = False  # this flush also sends whatever _write_soon buffered
        self._last_sent = asyncio.get_running_loop().time()
        try:
            await self.flush()
        except StreamClosedError:
            raise _CallerGone from None

    def _write_soon(self, data: bytes) -> None:
        """Buffer an event and flush once this task waits: events that arrived together leave in one write."""
        self.write(data)
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        if not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(self._flush_buffered)

    def _flush_buffered(self) -> None:
        if self._flush_soon and not self._finished:
            self._flush_soon = False
            self._flushing = self.flush()
            # A closed stream is noticed by on_connection_close; this only keeps the failure quiet.
            self._flushing.add_done_callback(retrieve_outcome)

    async def _flushed(self) -> None:
        """Wait until the last buffered flush reached the socket: a slow caller slows the relay."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            try:
                await flushing
            except StreamClosedError:
                raise _CallerGone from None

    def _start_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._keepalive = loop.call_later(self.config.keepalive_interval, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        """Whenever nothing was sent for keepalive_interval (before the first token, or a model that
        pauses to think), a comment keeps proxies and callers with read timeouts on the line."""
        if self._finished or self._gone:
            return
        loop = asyncio.get_running_loop()
        interval = self.config.keepalive_interval
        idle = loop.time() - self._last_sent
        if idle >= interval * 0.99:
            self._start_sse()
            self._write_soon(KEEPALIVE_EVENT)
            idle = 0.0
        self._keepalive = loop.call_later(interval - idle, self._keepalive_tick)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    async def _stream(
        self, params: dict[str, Any], state: IssState | None, exchange: Exchange, include_usage: bool
    ) -> None:
        chunks = self.backend.stream(params, state)
        self._start_keepalive()
        try:
            try:
                payload = await chunks.__anext__()
            except StopAsyncIteration:
                payload = None
            except UpstreamError as error:
                await self._failed_before_first_token(error, params, exchange, stream=True,
                                                      include_usage=include_usage)
                return
            if payload is None:
                empty = UpstreamError(502, "The upstream LLM ended the stream without sending anything.",
                                      code="upstream_empty")
                await self._failed_before_first_token(empty, params, exchange, stream=True,
                                                      include_usage=include_usage)
                return
            self._start_sse()
            finish_reason, usage = await self._relay(payload, chunks, exchange)
            await self._send(DONE_EVENT)
            exchange.done(finish_reason, usage)
        except UpstreamError as error:
            exchange.failed(status=error.status, message=error.message, where="upstream, mid-stream",
                            code=error.code)
            await self._send_error(error)
        except _CallerGone:
            exchange.cancelled()
        finally:
            self._stop_keepalive()
            await chunks.aclose()

    async def _relay(
        self, payload: bytes, chunks: AsyncIterator[bytes], exchange: Exchange
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Forward every payload as it arrives, byte for byte; returns finish reason and usage."""
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        first = True
        while True:
            try:
                chunk = orjson.loads(payload)
                if chunk.get("error") is not None and not chunk.get("choices"):
                    detail = redact(_error_message(chunk), self._secrets)
                    raise UpstreamError(502, f"The upstream LLM failed mid-stream: {detail}", code="upstream_error")
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    tool_calls = delta.get("tool_calls")
                    if content or tool_calls:
                        exchange.token(content if isinstance(content, str) else "")
                    for call in tool_calls or ():
                        exchange.tool_call(call)
                    finish_reason = choice.get("finish_reason") or finish_reason
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                # Not JSON, or JSON that is not a chunk (a list, a number, choices of strings...).
                message = "The upstream LLM sent a malformed chunk."
                raise UpstreamError(502, message, code="upstream_bad_chunk") from None
            if chunk.get("usage"):
                usage = chunk["usage"]
            if b"\n" in payload:
                # A multi-line SSE data field: valid JSON may hold raw newlines between tokens only.
                payload = payload.replace(b"\r", b" ").replace(b"\n", b" ")
            if first:
                await self._send(sse_event(payload))  # the first token leaves at once, with the headers
                first = False
            else:
                # Per-chunk flushes were a third of the CPU under load: coalesce what is already here.
                await self._flushed()
                self._write_soon(sse_event(payload))
            try:
                payload = await chunks.__anext__()
            except StopAsyncIteration:
                return finish_reason, usage

    async def _failed_before_first_token(
        self, error: UpstreamError, params: dict[str, Any], exchange: Exchange, *, stream: bool,
        include_usage: bool = False,
    ) -> None:
        """The fallback reply when one is set; else the error (an HTTP status while one can be sent)."""
        fallback = self.config.fallback_reply
        exchange.failed(
            status=error.status,
            message=error.message,
            where="upstream, before the first token" + ("; fallback reply sent" if fallback else ""),
            code=error.code,
        )
        if not fallback:
            await self._send_error(error)
            return
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        items = list(text_chunks([fallback], params["model"], usage=usage if include_usage or not stream else None))
        if not stream:
            self.write_json(completion_from_chunks(items))
            return
        self._start_sse()
        try:
            await self._send(b"".join(sse_json(item) for item in items) + DONE_EVENT)
        except _CallerGone:
            exchange.cancelled()

    # --- whole answers ----------------------------------------------------------------------

    async def _complete(self, params: dict[str, Any], state: IssState | None, exchange: Exchange) -> None:
        try:
            body = await self.backend.complete(params, state)
            completion = _read_completion(body)
        except UpstreamError as error:
            await self._failed_before_first_token(error, params, exchange, stream=False)
            return
        finish_reason = None
        for choice in completion["choices"]:
            message = choice.get("message", {})
            content = message.get("content")
            exchange.token(content if isinstance(content, str) else "")
            for index, call in enumerate(message.get("tool_calls") or ()):
                exchange.tool_call({"index": index, **call} if isinstance(call, dict) else call)
            finish_reason = choice.get("finish_reason")
        exchange.done(finish_reason, completion.get("usage"))
        self.set_header("Content-Type", "application/json")
        self.finish(body)


def _read_completion(body: bytes) -> dict[str, Any]:
    """The upstream's chat.completion, checked to be one; UpstreamError(502) when it is not."""
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError:
        completion = None
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not all(
        isinstance(choice, dict) and isinstance(choice.get("message", {}), dict) for choice in choices
    ):
        raise UpstreamError(502, "The upstream LLM sent an answer this server could not read.",
                            code="upstream_bad_response")
    return completion


def _error_message(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:300]
    return "unknown error"


def routes(services: Any) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"services": services}
    return [
        (r"/chat/completions", ChatHandler, args),
        (r"/v1/chat/completions", ChatHandler, args),
    ]
