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

import aiohttp
import httpx2
import openai
import orjson

from config import Settings
from services.errors import ApiError, upstream_error
from services.iss.state import IssState
from services.redaction import redact_text

log = logging.getLogger("iss_llm.upstream")

_MESSAGE_LIMIT = 500
_PER_REQUEST_TELEMETRY_OFF = {"x-stainless-retry-count": openai.Omit(), "x-stainless-read-timeout": openai.Omit()}


async def sse_payloads(blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The data payloads of an SSE byte stream, up to `[DONE]`; comments and other fields skipped."""
    buffer = b""
    data: list[bytes] = []
    async for block in blocks:
        buffer += block
        if b"\n" not in block:
            continue
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
                    if payload == b"[DONE]":
                        return
                    yield payload
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if buffer.startswith(b"data:"):
        data.append(buffer[5:].lstrip(b" "))
    if data and data != [b"[DONE]"]:
        yield b"\n".join(data)


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
        self._secrets = (settings.openai_api_key, settings.server_api_key)
        client = openai.AsyncOpenAI(
            # Local servers (vLLM, Ollama) take any key; the client insists on one.
            api_key=settings.openai_api_key or "no-key",
            base_url=settings.openai_base_url,
            timeout=openai.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout),
            max_retries=settings.upstream_max_retries,
            # aiohttp under the openai client: its C parser and coalesced reads keep the per-chunk cost
            # a fraction of httpx's (h11 and eight async-generator layers per chunk).
            http_client=openai.DefaultAioHttpClient(),
        )
        # The SDK's telemetry headers (x-stainless-*) are nine of the sixteen it sends: built,
        # copied and held for the life of every stream, for nothing a compatible server needs.
        # Omit() is the SDK's own way to leave a header out.
        self._client = client.with_options(
            default_headers={
                name: openai.Omit() for name in client.default_headers if name.lower().startswith("x-stainless-")
            }
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "base_url": str(self._client.base_url)}

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
            options={"security": {"bearer_auth": True}, "headers": _PER_REQUEST_TELEMETRY_OFF},
            stream=True,
        )
        try:
            yield response
        finally:
            await response.aclose()

    async def stream(self, params: dict[str, Any], iss: IssState | None) -> AsyncIterator[bytes]:
        try:
            async with self._create(params, stream=True) as response:
                async for payload in sse_payloads(response.aiter_bytes()):
                    yield payload
        except Exception as exc:
            raise self._translate(exc) from None

    async def complete(self, params: dict[str, Any], iss: IssState | None) -> bytes:
        try:
            async with self._create(params, stream=False) as response:
                return await response.aread()
        except Exception as exc:
            raise self._translate(exc) from None

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


def _aiohttp_cause(exc: BaseException) -> aiohttp.ClientError | None:
    """The aiohttp error in an exception's chain of causes (at most ten levels down), if any."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None or isinstance(current, aiohttp.ClientError):
            return current
        current = current.__cause__
    return None
