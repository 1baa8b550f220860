"""The upstream LLM through the official openai package: one shared AsyncOpenAI client.

The request goes out through the client's own `post()` (its auth, base URL, timeouts, retries and
error types) with the caller's JSON serialized once; the answer is read as raw SSE bytes and each
data payload is handed on unparsed: the caller gets the upstream's chunks byte for byte, tool calls
and usage included, without a round trip through the client's models on every token.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx2
import openai
import orjson

from config import Settings
from services.common.errors import ApiError, upstream_error
from services.common.openai_format import Chunk
from services.common.request_context import current_request_id
from services.iss.state import IssState
from services.ops.redaction import redact_text
from services.upstream.base import ToolLog
from services.upstream.bounded import bound_client, too_large
from services.upstream.openai_client import ChatClient

log = logging.getLogger("iss_llm.upstream")

_MESSAGE_LIMIT = 500
MAX_MODELS = 1000
MAX_MODEL_CHARS = 256
_PER_REQUEST_TELEMETRY_OFF = {"x-stainless-retry-count": openai.Omit(), "x-stainless-read-timeout": openai.Omit()}


async def sse_payloads(blocks: AsyncIterator[bytes], max_event: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """The data payloads of an SSE byte stream, up to `[DONE]`; comments and other fields skipped.

    A line, and the data of one event, are at most `max_event` bytes (a 502 ApiError past it). The
    buffer only grows by appends and each byte is scanned for a newline once, so a line that never
    ends costs linear time up to the limit, not quadratic.
    """
    buffer = bytearray()
    data: list[bytes] = []
    data_size = 0
    async for block in blocks:
        scanned = len(buffer)
        buffer += block
        newline = buffer.find(b"\n", scanned)
        if newline < 0:
            if len(buffer) > max_event:
                raise too_large("an SSE line", max_event, "UPSTREAM_MAX_EVENT_BYTES")
            continue
        start = 0
        while newline >= 0:
            end = newline - 1 if newline > start and buffer[newline - 1] == 13 else newline  # 13: \r
            if end - start > max_event:
                raise too_large("an SSE line", max_event, "UPSTREAM_MAX_EVENT_BYTES")
            if end == start:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
                    data_size = 0
                    if payload == b"[DONE]":
                        return
                    yield payload
            elif buffer.startswith(b"data:", start):
                value = bytes(buffer[start + 6 if buffer[start + 5:start + 6] == b" " else start + 5:end])
                data_size += len(value) + 1
                if data_size > max_event:
                    raise too_large("an SSE event", max_event, "UPSTREAM_MAX_EVENT_BYTES")
                data.append(value)
            start = newline + 1
            newline = buffer.find(b"\n", start)
        del buffer[:start]
        if len(buffer) > max_event:
            raise too_large("an SSE line", max_event, "UPSTREAM_MAX_EVENT_BYTES")
    if buffer.startswith(b"data:"):
        data.append(bytes(buffer[5:]).lstrip(b" "))
    if data and data != [b"[DONE]"]:
        yield b"\n".join(data)


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


def _shown_url(url: Any) -> str:
    """scheme://host:port/path of a request URL: no user, password or query."""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "?"
    return f"{parts.scheme}://{upstream_host(str(url))}{parts.path}"


def _encode(body: dict[str, Any]) -> bytes:
    """The body as JSON: orjson, or the json module past orjson's 255 levels of nesting."""
    try:
        # Copied to its exact size: orjson's bytes keep their whole output buffer (about 8 KB
        # for a short chat), and the client holds the body for as long as the stream lasts.
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
        self._secrets = settings.secrets
        client = ChatClient(
            # Local servers (vLLM, Ollama) take any key; the client insists on one.
            api_key=settings.openai_api_key or "no-key",
            base_url=settings.openai_base_url,
            timeout=openai.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout),
            max_retries=settings.upstream_max_retries,
            # aiohttp under the openai client: its C parser and coalesced reads keep the per-chunk cost
            # a fraction of httpx's (h11 and eight async-generator layers per chunk).
            # Bounded: every body arrives decompressed a step at a time, never past UPSTREAM_MAX_BYTES.
            http_client=bound_client(openai.DefaultAioHttpClient(), settings.upstream_max_bytes),
        )
        self._max_event = settings.upstream_max_event_bytes
        self._host = upstream_host(str(client.base_url))
        # The SDK's telemetry headers (x-stainless-*) are nine of the sixteen it sends: built,
        # copied and held for the life of every stream, for nothing a compatible server needs.
        # Omit() is the SDK's own way to leave a header out.
        self._client = client.with_options(
            default_headers={
                name: openai.Omit() for name in client.default_headers if name.lower().startswith("x-stainless-")
            }
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "host": self._host}

    @contextlib.asynccontextmanager
    async def _create(self, params: dict[str, Any], stream: bool) -> AsyncIterator[httpx2.Response]:
        """POST /chat/completions through the client (auth, retries, status errors), body unread."""
        # The body is the caller's JSON, already validated: serialized once with orjson and sent as
        # is. chat.completions.create() would walk it against the SDK's TypedDicts first (13% of
        # the server's CPU per request in the profile) to produce the same bytes.
        response = await self._client.post(
            "/chat/completions",
            cast_to=httpx2.Response,
            content=_encode({**params, "stream": stream}),
            options={"security": {"bearer_auth": True}, "headers": _request_headers()},
            stream=True,
        )
        try:
            yield response
        finally:
            await response.aclose()

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncIterator[Chunk]:
        try:
            async with self._create(params, stream=True) as response:
                async for payload in sse_payloads(response.aiter_raw(), self._max_event):
                    yield Chunk(payload)
        except Exception as exc:
            raise self._translate(exc) from None

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                       ) -> bytes:
        try:
            async with self._create(params, stream=False) as response:
                return b"".join([piece async for piece in response.aiter_raw()])
        except Exception as exc:
            raise self._translate(exc) from None

    async def list_models(self) -> list[str]:
        """The ids the upstream's GET /models lists (at most MAX_MODELS, each at most 256 characters)."""
        try:
            response = await self._client.get(
                "/models", cast_to=httpx2.Response, options={"headers": _PER_REQUEST_TELEMETRY_OFF, "timeout": 5.0}
            )
            body = orjson.loads(response.content)
        except Exception as exc:
            raise self._translate(exc) from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise upstream_error(502, "The upstream LLM's model list is not a list.", code="upstream_bad_response")
        ids = [item["id"] for item in data[:MAX_MODELS] if isinstance(item, dict) and isinstance(item.get("id"), str)]
        return [model for model in ids if 0 < len(model) <= MAX_MODEL_CHARS]

    async def close(self) -> None:
        await self._client.close()

    def _clean(self, message: str) -> str:
        message = redact_text(message, self._secrets)
        return message if len(message) <= _MESSAGE_LIMIT else message[:_MESSAGE_LIMIT] + "…"

    def _translate(self, exc: Exception) -> ApiError:
        """The caller-facing error for an upstream failure; the detail goes to the log."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            detail = self._clean(str(body.get("message") or exc.message))
            status = exc.status_code
            if status == 404:
                # Most often OPENAI_BASE_URL already ends in /chat/completions, or lacks /v1. The URL
                # is the operator's business: it goes to the log, never to the caller.
                url = _shown_url(exc.request.url) if getattr(exc, "request", None) is not None else "?"
                log.warning("upstream answered 404 for %s %s: %s (OPENAI_BASE_URL should be the part before "
                            "/chat/completions, e.g. https://api.openai.com/v1)",
                            getattr(getattr(exc, "request", None), "method", "POST"), url, detail)
                # The detail too: a 404's text often echoes the path it was sent to (OpenAI's does).
                return upstream_error(
                    502, "The upstream LLM answered 404 (not found): the model asked for or this server's "
                         "upstream address is wrong; the server's log has the details.",
                    code="upstream_not_found",
                )
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
            return upstream_error(502, f"The upstream LLM answered {status}: {detail}", code="upstream_error")
        # The aiohttp transport maps every connection error to a timeout; the aiohttp error it
        # wraps says whether time really ran out.
        cause = _aiohttp_cause(exc)
        not_a_timeout = cause is not None and not isinstance(cause, aiohttp.ServerTimeoutError)
        if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)) and not not_a_timeout:
            log.warning("upstream timed out: %s", type(exc).__name__)
            return upstream_error(504, "The upstream LLM did not answer in time.", code="upstream_timeout")
        if isinstance(exc, openai.APIConnectionError):
            log.warning("upstream unreachable: %s", self._clean(str(exc.__cause__ or exc)))
            return upstream_error(
                502, "The upstream LLM could not be reached.", code="upstream_unreachable"
            )
        if isinstance(exc, httpx2.HTTPError):
            log.warning("upstream connection failed mid-stream: %s", type(exc).__name__)
            return upstream_error(
                502, "The upstream LLM closed the connection before finishing.", code="upstream_dropped"
            )
        log.exception("unexpected upstream failure")
        return upstream_error(502, "The upstream LLM sent an answer this server could not read.",
                             code="upstream_bad_response")


def _request_headers() -> dict[str, Any]:
    """Per request: the SDK's telemetry headers left out, and this request's id for the upstream's logs."""
    request_id = current_request_id()
    if request_id is None:
        return _PER_REQUEST_TELEMETRY_OFF
    return {**_PER_REQUEST_TELEMETRY_OFF, "X-Request-Id": request_id}


def _aiohttp_cause(exc: BaseException) -> aiohttp.ClientError | None:
    """The aiohttp error in an exception's chain of causes (at most ten levels down), if any."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None or isinstance(current, aiohttp.ClientError):
            return current
        current = current.__cause__
    return None
