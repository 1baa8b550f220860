"""POST /chat/completions and /v1/chat/completions: parse, authorize, add the ISS block, answer.

The handler only decides: it parses and authorizes, injects the ISS block, picks a streamed or a
whole answer, and records how the request ended exactly once (Exchange.end). Writing SSE lives in
handlers/sse.py, reading and recording the upstream's chunks in services/chat/relay.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import tornado.web

from config import Settings
from handlers.body import BoundedBodyHandler
from handlers.cross_site import CorsMixin, check_cross_site
from handlers.sse import CallerGone, SseWriter
from services.chat.conversations import Conversations, conversation_key
from services.chat.deadline import Deadline
from services.chat.endings import (
    CALLER_LEFT,
    Ending,
    Outcome,
    Stop,
    clean_end_chunks,
    failed_before_first_token,
    fallback_chunks,
    stopped,
)
from services.chat.exchange import Exchange
from services.chat.inflight import Inflight
from services.chat.models import resolve_model
from services.chat.platforms import Platforms
from services.chat.relay import Relay, read_completion, record_finish_reason, record_usage
from services.common import request_context
from services.common.api_keys import ApiKeys
from services.common.errors import ApiError, error_body
from services.common.openai_format import (
    DONE_EVENT,
    ChatRequest,
    completion_from_chunks,
    parse_chat_request,
    sse_json,
)
from services.common.request_context import new_request_id
from services.console import Hub
from services.iss.block import BlockMemo, inject
from services.iss.state import IssState, Tracker
from services.ops.recorder import Recorder
from services.ops.tracing import Tracing
from services.upstream.base import Backend

log = logging.getLogger("iss_llm.chat")

@tornado.web.stream_request_body
class ChatHandler(CorsMixin, BoundedBodyHandler):
    """OpenAI-compatible chat completions, streamed as SSE or answered as one JSON object."""

    def initialize(self, settings: Settings, tracker: Tracker, backend: Backend, hub: Hub, inflight: Inflight,
                   metrics: Recorder, conversations: Conversations, platforms: Platforms, tracing: Tracing,
                   keys: ApiKeys, blocks: BlockMemo) -> None:
        self.config = settings
        self.blocks = blocks
        self.tracing = tracing
        self.allow_origins(settings)
        self.platforms = platforms
        self.tracker = tracker
        self.backend = backend
        self.hub = hub
        self.inflight = inflight
        self.metrics = metrics
        self.keys = keys
        self.key_name: str | None = None  # the name of the caller's key (None: the server has no keys)
        self._secrets = settings.secrets
        self.body_limit = settings.max_body_bytes
        self.conversations = conversations
        self._work: asyncio.Future[Ending] | None = None
        self._gone = False
        self._finished_answer = False  # finish() ran (on_finish): nothing more can be written
        self._stopped: Stop | None = None
        # Both armed when a request begins (post); until then deadlines that never fire.
        self._first_token = Deadline(None, lambda: None)
        self._max_stream = Deadline(None, lambda: None)
        self._relay: Relay | None = None
        self._streamed = False
        self._whole: bytes | None = None  # a whole answer's body, sent once its outcome is recorded
        self._exchange: Exchange | None = None
        self.sse = SseWriter(self, settings.keepalive_interval, on_keepalive=metrics.keepalive)

    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "POST":
            return
        if self.inflight.draining:
            raise ApiError(503, "This server is shutting down; send the request again.",
                           type="server_error", code="server_shutting_down")
        self.key_name = self.check_bearer()
        check_cross_site(self.request, self.config)
        self.check_declared_size()

    async def post(self) -> None:
        request = parse_chat_request(self.read_body())
        assert self.request_id is not None  # named in prepare()
        # The platform's conversation id (Tavus: the header; Vapi: call.id), and what goes upstream.
        caller = self.platforms.read(self.request.headers, request.params)
        request.params = caller.params
        conversation_id = caller.conversation_id
        context = request_context.current()
        if context is not None:
            context.conversation_id = conversation_id
            context.key_name = self.key_name
        model = resolve_model(self.config, request.model)
        exchange = Exchange(
            self.hub,
            request_id=self.request_id,
            # The console's record has an id of the server's own when the caller named the request.
            event_id=new_request_id() if self.request_id_from_caller else None,
            conversation_id=conversation_id,
            remote_ip=self.request.remote_ip,
            path=self.request.path,
            observer=self.metrics,
            trace=self.tracing.start(self.request.headers, request_id=self.request_id,
                                     conversation_id=conversation_id, model=model, stream=request.stream,
                                     params=request.params),
            key_name=self.key_name,
        )
        self._exchange = exchange
        # The outcome line (done, cancelled, error...) carries the conversation id at INFO; this one
        # is for following a request step by step.
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
            platform=caller.platform,
            left_out=caller.left_out,
        )
        self._streamed = request.stream
        self.inflight.enter(self, (exchange.id, exchange.path))
        self._first_token = Deadline(self.config.first_token_timeout, lambda: self.stop(Stop.FIRST_TOKEN_TIMEOUT))
        self._max_stream = Deadline(self.config.max_stream_seconds, lambda: self.stop(Stop.MAX_STREAM_SECONDS))
        # Within one caller, by the id exactly as sent: another key's holder, or an id that only sanitizes
        # to the same, never ends this answer.
        superseding = conversation_key(self.key_name, caller.conversation_sent) if (
            self.config.supersede == "conversation") else None
        if superseding:
            self.conversations.claim(superseding, self)
        ending: Ending | None = None
        try:
            try:
                ending = await self._answer(request, model, exchange)
            except Exception as exc:  # a bug, not the caller's or the upstream's fault
                log.error("request %s failed inside this server", exchange.id, exc_info=exc)
                error = ApiError(500, "The server had an error while processing your request.",
                                 code="internal_error", type="server_error")
                ending = Ending(Outcome.ERROR, error.status, error=error, where="server")
            exchange.end(ending)  # the one place an outcome is recorded
            await self._last_words(ending, model, request.include_usage)
        finally:
            self.sse.stop_keepalive()
            self._first_token.cancel()
            self._max_stream.cancel()
            if superseding:
                self.conversations.release(superseding, self)
            self.inflight.leave(self, exchange.outcome)

    def logs_itself(self) -> bool:
        """A chat request's one log line is its outcome line (Exchange.end, or _refused)."""
        return self.request.method == "POST"

    def outcome_status(self) -> int:
        """The recorded outcome's status once there is one (Exchange.end), so the access log and the
        outcome line agree: 499 for a caller that left, the error's status for an error event."""
        recorded = self._exchange.status if self._exchange is not None else None
        return recorded if recorded is not None else self.get_status()

    def on_finish(self) -> None:
        self._finished_answer = True
        if self._exchange is None and self.request.method == "POST":
            self._refused()
        # Break the cycle through the SSE writer (deadlines break theirs once cancelled): a finished
        # request is freed by reference counting, not by a full collection that pauses every stream.
        self.sse.release()

    def _refused(self) -> None:
        """Answered before it became an exchange (401, 400, 413, 503 while draining): still one outcome."""
        status = self.get_status()
        outcome = Outcome.SHUTDOWN if status == 503 and self.inflight.draining else Outcome.ERROR
        self.metrics.refused(self.request.path, outcome.value, status)
        request = self.request
        duration_ms = round(1000.0 * request.request_time(), 1)
        log.log(logging.WARNING if status < 500 else logging.ERROR,
                "request %s %d %s %s (%s) refused %.1fms", self.request_id, status, request.method, request.path,
                request.remote_ip, duration_ms,
                extra={"outcome": outcome.value, "status": status, "method": request.method, "path": request.path,
                       "remote_ip": request.remote_ip, "duration_ms": duration_ms})

    def on_connection_close(self) -> None:
        # Tornado's own handling ends the wait for a body the caller stopped sending.
        super().on_connection_close()
        # The caller went away: stop the upstream at once, so nothing more is generated or billed.
        self._gone = True
        self.sse.stop_keepalive()
        self.stop(Stop.CALLER_GONE)

    def end_for_shutdown(self) -> None:
        """The drain timeout passed: end this answer now, with an error the caller can see."""
        self.stop(Stop.SHUTDOWN)

    def supersede(self) -> None:
        """A newer request of this conversation arrived: end this one now, cleanly."""
        self.stop(Stop.SUPERSEDED)

    def stop(self, reason: Stop) -> None:
        """End the answer from outside its task (the task is cancelled, its upstream stream closed)."""
        if self._stopped is None:
            self._stopped = reason
        if self._work is not None and not self._work.done():
            self._work.cancel()

    # --- deciding -------------------------------------------------------------------------

    async def _answer(self, request: ChatRequest, model: str, exchange: Exchange) -> Ending:
        """Run the answer as a task others can cancel (caller gone, shutdown); how it ended."""
        looking = time.perf_counter()
        state = await self.tracker.current()
        self.metrics.iss_looked_up(time.perf_counter() - looking)
        if self._stopped is not None:
            return self._ended_early()
        messages = request.messages
        if self.config.iss_inject != "off":
            block, record = self.blocks.of(state, self.tracker.crew())  # the crew as last fetched: never waits
            exchange.iss(block, record)
            messages = inject(messages, block, self.config.iss_inject)
        params = {**request.params, "model": model, "messages": messages}
        if request.stream:
            self._work = asyncio.ensure_future(self._stream(params, state, exchange))
        else:
            self._work = asyncio.ensure_future(self._complete(params, state, exchange))
        await asyncio.wait({self._work})
        if self._work.cancelled():
            return self._ended_early()
        return self._work.result()

    def _ended_early(self) -> Ending:
        """The work was stopped before its end (see Stop): how that ends the request."""
        return stopped(self._stopped, caller_gone=self._gone, first_token_timeout=self.config.first_token_timeout,
                       fallback_reply=self.config.fallback_reply, max_stream_seconds=self.config.max_stream_seconds,
                       content_sent=self._relay is not None and self._relay.content)

    async def _stream(self, params: dict[str, Any], state: IssState | None, exchange: Exchange) -> Ending:
        exchange.asked_upstream()
        chunks = self.backend.stream(params, state, exchange)
        relay = self._relay = Relay(exchange, self._secrets)
        self.sse.start_keepalive()
        try:
            async with contextlib.aclosing(relay.events(chunks)) as events:
                async for event in events:
                    if relay.content:
                        self._first_token.cancel()
                    if relay.payloads == 1:
                        await self.sse.send(event)  # the first event leaves at once, with the headers
                        exchange.first_token_written()
                    elif exchange.first_written is None and exchange.first_token_at is not None:
                        await self.sse.send(event)  # so does the first content token: the caller waits on it
                        exchange.first_token_written()
                    else:
                        # Per-chunk flushes were a third of the CPU under load: coalesce what is already here.
                        await self.sse.flushed()
                        self.sse.write_soon(event)
            return Ending(Outcome.DONE, 200, finish_reason=relay.finish_reason, usage=relay.usage)
        except ApiError as error:
            if not relay.content:  # nothing said yet (at most the role chunk): the fallback still fits
                return failed_before_first_token(error, self.config.fallback_reply)
            return Ending(Outcome.ERROR, error.status, error=error, where="upstream, mid-stream")
        except CallerGone:
            return Ending(Outcome.CANCELLED, CALLER_LEFT)
        finally:
            self.sse.stop_keepalive()
            await chunks.aclose()

    async def _complete(self, params: dict[str, Any], state: IssState | None, exchange: Exchange) -> Ending:
        exchange.asked_upstream()
        try:
            body = await self.backend.complete(params, state, exchange)
            self._first_token.cancel()
            completion = read_completion(body, exchange)
        except ApiError as error:
            return failed_before_first_token(error, self.config.fallback_reply)
        self._whole = body
        choices = completion["choices"]
        return Ending(Outcome.DONE, 200,
                      finish_reason=record_finish_reason(choices[-1].get("finish_reason")) if choices else None,
                      usage=record_usage(completion.get("usage")))

    # --- the last words, once the outcome is recorded ----------------------------------------

    async def _last_words(self, ending: Ending, model: str, include_usage: bool) -> None:
        if self._finished_answer or self._gone or ending.outcome is Outcome.CANCELLED:
            return
        try:
            if ending.outcome is Outcome.DONE and not self._streamed:
                self.set_header("Content-Type", "application/json")
                self.finish(self._whole)
            elif ending.outcome is Outcome.DONE:
                await self.sse.send(DONE_EVENT)
            elif ending.outcome in (Outcome.FALLBACK, Outcome.SUPERSEDED):
                relay = self._relay if self.sse.started else None
                first = relay.first if relay is not None else None  # the completion the caller is reading
                if ending.outcome is Outcome.FALLBACK:
                    items = fallback_chunks(self.config.fallback_reply or "", model,
                                            usage=include_usage or not self._streamed, first=first)
                else:  # a clean end: finish_reason "stop" and [DONE]
                    items = clean_end_chunks(first, model)
                if not self._streamed:
                    self.write_json(completion_from_chunks(items))
                else:
                    await self.sse.send(b"".join(sse_json(item) for item in items) + DONE_EVENT)
            elif ending.error is not None:
                await self._send_error(ending.error)
        except CallerGone:
            pass

    async def _send_error(self, error: ApiError) -> None:
        """The error as an HTTP status, or as an SSE error event and [DONE] once the stream began."""
        if self.sse.started:
            await self.sse.send(sse_json(error_body(error.message, type=error.type, code=error.code)) + DONE_EVENT)
            return
        self.send_api_error(error)
