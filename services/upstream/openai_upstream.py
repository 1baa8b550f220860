"""The upstream LLM: any OpenAI-compatible server, spoken to over one shared aiohttp session.

The request is the caller's JSON serialized once (orjson) and sent as is; the answer is read as raw
SSE bytes and each data payload is handed on unparsed: the caller gets the upstream's chunks byte
for byte, tool calls and usage included. Every byte read is bounded (UPSTREAM_MAX_BYTES, after
decompression; UPSTREAM_MAX_EVENT_BYTES per SSE line or event), every wait too (UPSTREAM_TIMEOUT,
UPSTREAM_CONNECT_TIMEOUT), and every failure becomes one ApiError: the detail, redacted, goes to the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from config import Settings
from services.common.errors import ApiError, upstream_error
from services.common.futures import within
from services.common.openai_format import MAX_MODEL_CHARS, Chunk
from services.common.request_context import current_request_id
from services.iss.state import IssState
from services.ops.redaction import redact_text
from services.upstream.base import ToolLog
from services.upstream.bounded import read_body
from services.upstream.not_found import base_url_hint, error_text, model_hint, model_missing
from services.upstream.sse import sse_payloads
from services.upstream.upstream_client import (
    UpstreamClient,
    UpstreamStatusError,
    UpstreamUnreachable,
    shown_url,
)

log = logging.getLogger("iss_llm.upstream")

_MESSAGE_LIMIT = 500
MAX_MODELS = 1000
MODELS_TIMEOUT = 5.0
# A 404 for a model: how long its answer may wait for the upstream's model list when none is cached.
MODEL_HINT_WAIT = 1.0

__all__ = ["OpenAIUpstream", "sse_payloads", "upstream_host"]


def upstream_host(url: str) -> str:
    """The host (and port) of an upstream URL: never its user, password, path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def _encode(body: dict[str, Any]) -> bytes:
    """The body as JSON: orjson, or the json module past orjson's 255 levels of nesting."""
    try:
        # Copied to its exact size: orjson's bytes keep their whole output buffer (about 8 KB
        # for a short chat), and the request may be held for as long as the stream lasts.
        return bytes(memoryview(orjson.dumps(body)))
    except orjson.JSONEncodeError:
        try:
            return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        except RecursionError:
            raise ApiError(400, "The request is nested too deeply to forward.", code="invalid_request") from None


class OpenAIUpstream:
    """Chat completions from any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp)."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self._secrets = (*settings.secrets, *(value for _, value in settings.upstream_headers))
        self._http = UpstreamClient(settings)
        self._max_event = settings.upstream_max_event_bytes
        self._max_bytes = settings.upstream_max_bytes
        self._host = upstream_host(self._http.base_url)
        self._models: list[str] | None = None  # the upstream's list, as last read
        self._models_at = -float("inf")
        self._models_ttl = settings.models_cache_seconds
        self._models_fetch: asyncio.Future[list[str]] | None = None
        self._models_timeout = aiohttp.ClientTimeout(
            total=MODELS_TIMEOUT, sock_connect=settings.upstream_connect_timeout
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "host": self._host}

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncGenerator[Chunk, None]:
        try:
            response = await self._http.send("POST", self._http.chat_url, _encode({**params, "stream": True}),
                                             request_id=current_request_id())
            read_to_end = False
            try:
                async for payload in sse_payloads(response.content.iter_any(), self._max_event, self._max_bytes):
                    yield Chunk(payload)
                read_to_end = True
            finally:
                self._http.finish(response, read_to_end)
        except Exception as exc:
            raise await self._failure(exc, params) from None

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                       ) -> bytes:
        try:
            response = await self._http.send("POST", self._http.chat_url, _encode({**params, "stream": False}),
                                             request_id=current_request_id())
            try:
                return await read_body(response, self._max_bytes)
            finally:
                response.release()
        except Exception as exc:
            raise await self._failure(exc, params) from None

    async def list_models(self) -> list[str]:
        """The ids the upstream's GET /models lists (at most MAX_MODELS, each at most 256 characters)."""
        try:
            response = await self._http.send("GET", self._http.models_url, timeout=self._models_timeout)
            try:
                body = orjson.loads(await read_body(response, self._max_bytes))
            finally:
                response.release()
        except Exception as exc:
            raise await self._failure(exc, None) from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise upstream_error(502, "The upstream LLM's model list is not a list.", code="upstream_bad_response")
        ids = [item["id"] for item in data[:MAX_MODELS] if isinstance(item, dict) and isinstance(item.get("id"), str)]
        self._models = [model for model in ids if 0 < len(model) <= MAX_MODEL_CHARS]
        self._models_at = time.monotonic()
        return self._models

    async def close(self) -> None:
        if self._models_fetch is not None:
            self._models_fetch.cancel()
        await self._http.close()

    async def _known_models(self) -> list[str] | None:
        """The upstream's models: as last read (within MODELS_CACHE_SECONDS), else one short shared fetch
        (the list last read, or None, when it fails or takes longer)."""
        if self._models is not None and time.monotonic() - self._models_at <= self._models_ttl:
            return self._models
        if self._models_fetch is None or self._models_fetch.done():
            self._models_fetch = asyncio.ensure_future(self.list_models())
            # Read when it fails after the hint stopped waiting: a failed fetch is only "no list".
            self._models_fetch.add_done_callback(lambda fetch: fetch.cancelled() or fetch.exception())
        try:
            return await within(asyncio.shield(self._models_fetch), MODEL_HINT_WAIT)
        except (TimeoutError, ApiError):
            return self._models

    def _clean(self, message: str) -> str:
        message = redact_text(message, self._secrets)
        return message if len(message) <= _MESSAGE_LIMIT else message[:_MESSAGE_LIMIT] + "…"

    async def _failure(self, exc: Exception, params: dict[str, Any] | None) -> ApiError:
        """The caller-facing error for an upstream failure; the detail goes to the log."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, UpstreamStatusError):
            return await self._status_error(exc, params)
        if isinstance(exc, asyncio.TimeoutError):
            log.warning("upstream timed out: %s", type(exc).__name__)
            return upstream_error(504, "The upstream LLM did not answer in time.", code="upstream_timeout")
        if isinstance(exc, UpstreamUnreachable):
            log.warning("upstream unreachable: %s", self._clean(str(exc)))
            return upstream_error(502, "The upstream LLM could not be reached.", code="upstream_unreachable")
        if isinstance(exc, aiohttp.ClientError):
            log.warning("upstream connection failed mid-stream: %s", type(exc).__name__)
            return upstream_error(
                502, "The upstream LLM closed the connection before finishing.", code="upstream_dropped"
            )
        if isinstance(exc, orjson.JSONDecodeError):
            log.warning("upstream sent a body that is not JSON")
        else:
            log.exception("unexpected upstream failure")
        return upstream_error(502, "The upstream LLM sent an answer this server could not read.",
                              code="upstream_bad_response")

    async def _status_error(self, exc: UpstreamStatusError, params: dict[str, Any] | None) -> ApiError:
        message, code = error_text(exc.body, exc.status)
        detail = self._clean(message)
        status = exc.status
        if status == 404:
            if params is not None and model_missing(message, code):
                hint = model_hint(params.get("model"), await self._known_models())
                log.warning("upstream answered 404 for %s %s: %s (%s)", exc.method, exc.url, detail, hint)
                return upstream_error(502, hint, code="upstream_not_found")
            # The URL is the operator's business: it goes to the log, never to the caller. The
            # detail too: a 404's text often echoes the path it was sent to (OpenAI's does).
            log.warning("upstream answered 404 for %s %s: %s (%s)", exc.method, exc.url, detail,
                        base_url_hint(self._http.base_url))
            return upstream_error(
                502, "The upstream LLM answered 404 (not found): this server's upstream address looks wrong; "
                     "the server's log has the details.",
                code="upstream_not_found",
            )
        if 300 <= status < 400:
            log.warning("upstream answered %d for %s %s, redirecting to %s: OPENAI_BASE_URL should be the "
                        "address it redirects to", status, exc.method, exc.url,
                        shown_url(exc.location) if exc.location else "?")
        else:
            log.warning("upstream answered %d: %s", status, detail)
        if status == 429:
            return upstream_error(
                429, f"The upstream LLM is rate limiting requests: {detail}",
                code="upstream_rate_limited", type="rate_limit_error",
            )
        if status in {400, 422}:
            # The caller's own parameters, passed through unchanged, were refused.
            return upstream_error(
                400, f"The upstream LLM rejected the request: {detail}",
                code="upstream_rejected", type="invalid_request_error",
            )
        if status in {401, 403}:
            # The operator's credentials, not the caller's: its text (a masked key's tail, the account) stays
            # in the log above.
            return upstream_error(502, f"The upstream LLM refused this server's credentials ({status}); the "
                                       "operator should check OPENAI_API_KEY.", code="upstream_error")
        return upstream_error(502, f"The upstream LLM answered {status}: {detail}", code="upstream_error")
