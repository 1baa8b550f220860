"""The data payloads of an upstream's SSE byte stream, every size bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.upstream.bounded import too_large


async def sse_payloads(blocks: AsyncIterator[bytes], max_event: int = 1024 * 1024,
                       max_bytes: int | None = None) -> AsyncIterator[bytes]:
    """The data payloads of an SSE byte stream, up to `[DONE]`; comments and other fields skipped.

    A line, and the data of one event, are at most `max_event` bytes; the whole stream at most
    `max_bytes` (a 502 ApiError past either). The buffer only grows by appends and each byte is
    scanned for a newline once, so a line that never ends costs linear time up to the limit, not
    quadratic.
    """
    buffer = bytearray()
    data: list[bytes] = []
    data_size = 0
    total = 0
    async for block in blocks:
        total += len(block)
        if max_bytes is not None and total > max_bytes:
            raise too_large("an answer", max_bytes, "UPSTREAM_MAX_BYTES")
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
