"""Every byte read from the upstream is bounded: decompressed here, as it arrives, never past a limit.

`BoundedTransport` wraps the HTTP client's transport, so whatever reads a response body (the SSE
reader, a whole answer, the openai client reading an error body) meets the same limit: the body,
after decompression, is at most `max_bytes`. gzip and deflate are inflated here a step at a time
with zlib's `max_length`, so a compressed body never allocates more than the room left under the
limit (a 0.5 MB gzip bomb of 500 MB stops at the limit, having allocated about that much); the
response handed on carries no Content-Encoding, so nothing inflates it again. Any other encoding
is refused. Past the limit, reading raises an upstream ApiError (502).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import httpx2

from services.common.errors import ApiError, upstream_error
from services.ops.tracing import upstream_headers

ACCEPT_ENCODING = "gzip, deflate"


def too_large(what: str, limit: int, setting: str) -> ApiError:
    return upstream_error(
        502, f"The upstream LLM sent {what} larger than this server accepts ({limit} bytes; {setting}).",
        code="upstream_too_large",
    )


class _Inflater:
    """Content-Encoding undone step by step, each step's output at most `room + 1` bytes."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        self._may_be_raw_deflate = encoding == "deflate"
        if encoding in {"", "identity"}:
            self._z = None
        elif encoding in {"gzip", "x-gzip"}:
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise upstream_error(502, f"The upstream LLM sent a body in an encoding this server does not read "
                                     f"({encoding[:40]!r}).", code="upstream_bad_response")

    def steps(self, data: bytes, room: int) -> list[bytes]:
        """The inflated pieces of `data`; stops (returning what it has) once more than `room` came out."""
        if self._z is None:
            return [data]
        out: list[bytes] = []
        size = 0
        try:
            while data:
                piece = self._z.decompress(data, room - size + 1)
                self._may_be_raw_deflate = False
                out.append(piece)
                size += len(piece)
                if size > room:
                    break
                data = self._z.unconsumed_tail
        except zlib.error:
            if self._may_be_raw_deflate and not out:
                # "deflate" is sometimes sent raw, without the zlib header.
                self._may_be_raw_deflate = False
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.steps(data, room)
            raise upstream_error(502, "The upstream LLM sent a compressed body that does not inflate.",
                                code="upstream_bad_response") from None
        return out


class _BoundedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, encoding: str, max_bytes: int) -> None:
        self._inner = inner
        self._inflater = _Inflater(encoding)
        self._max = max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for raw in self._inner:
            for piece in self._inflater.steps(raw, self._max - size):
                size += len(piece)
                if size > self._max:
                    raise too_large("an answer", self._max, "UPSTREAM_MAX_BYTES")
                if piece:
                    yield piece

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedTransport(httpx2.AsyncBaseTransport):
    """A transport whose response bodies arrive decompressed and never larger than `max_bytes`."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, max_bytes: int) -> None:
        self._inner = inner
        self.max_bytes = max_bytes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING  # what _Inflater reads, nothing else
        trace_context = upstream_headers()  # the upstream round's traceparent, when tracing is on
        if trace_context:
            request.headers.update(trace_context)
        response = await self._inner.handle_async_request(request)
        encoding = response.headers.get("Content-Encoding", "")
        headers = [(name, value) for name, value in response.headers.raw
                   if name.lower() not in (b"content-encoding", b"content-length")]
        try:
            stream = _BoundedStream(response.stream, encoding, self.max_bytes)  # type: ignore[arg-type]
        except ApiError:
            await response.aclose()
            raise
        return httpx2.Response(response.status_code, headers=headers, stream=stream, request=request,
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


def bound_client(client: httpx2.AsyncClient, max_bytes: int) -> httpx2.AsyncClient:
    """`client` with every transport it uses (direct, and through proxies) bounded.

    httpx2 has no public way to wrap the transport a client built for itself (the aiohttp one the
    openai package chooses, with its pool limits): its two attributes are replaced here, once.
    """
    client._transport = BoundedTransport(client._transport, max_bytes)
    client._mounts = {
        pattern: BoundedTransport(transport, max_bytes) if transport is not None else None
        for pattern, transport in client._mounts.items()
    }
    return client
