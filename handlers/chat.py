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
        self._body = bytearray()
        self._too_large = False
        self._work: asyncio.Future[None] | None = None
        self._sse_started = False
        self._flush_soon = False
        self._flushing: asyncio.Future[None] | None = None

    def prepare(self) -> None:
        if self.request.method != "POST":
            return
        self.check_bearer()
        length = self.request.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.config.max_body_bytes:
            raise self._too_large_error()

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._body += chunk
        if len(self._body) > self.config.max_body_bytes:
            # Keep reading (so the 413 can be sent) but stop keeping what arrives.
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
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        self.set_header("X-Request-Id", request_id)
        conversation = self.request.headers.get("conversation-id")
        exchange = Exchange(
            self.hub,
            request_id=request_id,
            conversation_id=_CONVERSATION_ID.sub("", conversation)[:128] if conversation else None,
            remote_ip=self.request.remote_ip,
            path=self.request.path,
        )
        model = self.config.llm_model or request.model or self.config.default_model
        log.info(
            "request %s conversation=%s model=%s stream=%s messages=%d",
            request_id, exchange.conversation_id, model, request.stream, len(request.messages),
        )
        exchange.request(
            model=model,
            stream=request.stream,
            messages=request.messages,
            params=request.params,
            upstream=self.backend.describe(),
        )
        self.inflight.enter()
        try:
            state = await self.tracker.current()
            messages = request.messages
            if self.config.iss_inject != "off":
                block = iss_block(state)
                exchange.iss(block, state.to_dict() if state is not None else None)
                messages = inject(messages, block, self.config.iss_inject)
            params = {**request.params, "model": model, "messages": messages}
            if request.stream:
                work: Awaitable[None] = self._stream(params, state, exchange)
            else:
                work = self._complete(params, state, exchange)
            self._work = asyncio.ensure_future(work)
            await asyncio.wait({self._work})
            if self._work.cancelled():
                exchange.cancelled()
            elif self._work.exception() is not None:
                await self._internal_error(exchange, self._work.exception())
        finally:
            self.inflight.leave(exchange.outcome)

    async def _internal_error(self, exchange: Exchange, exc: BaseException) -> None:
        """A bug, not the caller's or the upstream's fault: the log gets the traceback, the caller a clean error."""
        log.error("request %s failed inside this server", exchange.id, exc_info=exc)
        message = "The server had an error while processing your request."
        exchange.failed(status=500, message=message, where="server", code="internal_error")
        if self._finished:
            return
        if self._sse_started:
            await self._send_quietly(sse_json(error_body(message, type="server_error", code="internal_error")))
            await self._send_quietly(DONE_EVENT)
            return
        self.send_api_error(ApiError(500, message, type="server_error", code="internal_error"))

    def on_connection_close(self) -> None:
        # The caller went away: stop the upstream at once, so nothing more is generated or billed.
        if self._work is not None and not self._work.done():
            self._work.cancel()

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
        self.write(data)
        self._flush_soon = False  # this flush also sends whatever _write_soon buffered
        try:
            await self.flush()
        except StreamClosedError:
            raise _CallerGone from None

    def _write_soon(self, data: bytes) -> None:
        """Buffer an event and flush once this task waits: events that arrived together leave in one write."""
        self.write(data)
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_buffered)

    def _flush_buffered(self) -> None:
        if self._flush_soon and not self._finished:
            self._flush_soon = False
            self._flushing = self.flush()

    async def _flushed(self) -> None:
        """Wait until the last buffered flush reached the socket: a slow caller slows the relay."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            try:
                await flushing
            except StreamClosedError:
                raise _CallerGone from None

    async def _first_payload(self, chunks: AsyncIterator[bytes]) -> bytes:
        """The first payload; until it comes, a keepalive comment every keepalive_interval."""
        pending = asyncio.ensure_future(chunks.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=self.config.keepalive_interval)
                if done:
                    return pending.result()
                self._start_sse()
                await self._send(KEEPALIVE_EVENT)
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.wait({pending})

    async def _stream(self, params: dict[str, Any], state: IssState | None, exchange: Exchange) -> None:
        chunks = self.backend.stream(params, state)
        try:
            try:
                payload = await self._first_payload(chunks)
            except StopAsyncIteration:
                await self._upstream_failed(
                    UpstreamError(502, "The upstream LLM ended the stream without sending anything.",
                                  code="upstream_empty"),
                    params, exchange,
                )
                return
            except UpstreamError as error:
                await self._upstream_failed(error, params, exchange)
                return
            self._start_sse()
            finish_reason, usage = await self._relay(payload, chunks, exchange)
            await self._send(DONE_EVENT)
            exchange.done(finish_reason, usage)
        except UpstreamError as error:
            exchange.failed(status=error.status, message=error.message, where="upstream, mid-stream",
                            code=error.code)
            await self._send_quietly(sse_json(error_body(error.message, type=error.type, code=error.code)))
            await self._send_quietly(DONE_EVENT)
        except _CallerGone:
            exchange.cancelled()
        finally:
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
                    detail = redact(_error_message(chunk), (self.config.openai_api_key, self.server_api_key))
                    raise UpstreamError(502, f"The upstream LLM failed mid-stream: {detail}", code="upstream_error")
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if content or delta.get("tool_calls"):
                        exchange.token(content if isinstance(content, str) else "")
                    finish_reason = choice.get("finish_reason") or finish_reason
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                # Not JSON, or JSON that is not a chunk (a list, a number, choices of strings...).
                message = "The upstream LLM sent a malformed chunk."
                raise UpstreamError(502, message, code="upstream_bad_chunk") from None
            if chunk.get("usage"):
                usage = chunk["usage"]
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

    async def _send_quietly(self, data: bytes) -> None:
        try:
            await self._send(data)
        except _CallerGone:
            pass

    async def _upstream_failed(self, error: UpstreamError, params: dict[str, Any], exchange: Exchange) -> None:
        """Before the first token: the fallback reply, or an HTTP error (an SSE one once committed)."""
        fallback = self.config.fallback_reply
        exchange.failed(
            status=error.status,
            message=error.message,
            where="upstream, before the first token" + ("; fallback reply sent" if fallback else ""),
            code=error.code,
        )
        if fallback:
            self._start_sse()
            include_usage = bool((params.get("stream_options") or {}).get("include_usage"))
            usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0} if include_usage else None
            for item in text_chunks([fallback], params["model"], usage=usage):
                await self._send(sse_json(item))
            await self._send(DONE_EVENT)
            return
        if self._sse_started:
            await self._send(sse_json(error_body(error.message, type=error.type, code=error.code)))
            await self._send(DONE_EVENT)
            return
        self.send_api_error(ApiError(error.status, error.message, type=error.type, code=error.code))

    # --- whole answers ----------------------------------------------------------------------

    async def _complete(self, params: dict[str, Any], state: IssState | None, exchange: Exchange) -> None:
        try:
            body = await self.backend.complete(params, state)
            try:
                completion = orjson.loads(body)
            except orjson.JSONDecodeError:
                completion = None
            if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
                raise UpstreamError(502, "The upstream LLM sent an answer this server could not read.",
                                    code="upstream_bad_response")
        except UpstreamError as error:
            fallback = self.config.fallback_reply
            exchange.failed(
                status=error.status,
                message=error.message,
                where="upstream" + ("; fallback reply sent" if fallback else ""),
                code=error.code,
            )
            if fallback:
                self.write_json(completion_from_chunks(text_chunks([fallback], params["model"])))
            else:
                self.send_api_error(ApiError(error.status, error.message, type=error.type, code=error.code))
            return
        finish_reason = None
        for choice in completion["choices"]:
            message = choice.get("message") or {} if isinstance(choice, dict) else {}
            exchange.token(message.get("content") or "")
            finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        exchange.done(finish_reason, completion.get("usage"))
        self.set_header("Content-Type", "application/json")
        self.finish(body)


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
