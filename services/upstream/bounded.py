"""Every byte read from the upstream is bounded: a body is read, as aiohttp decodes it, never past a limit.

aiohttp undoes gzip and deflate itself, a step at a time (each step's output at most a read
buffer's worth, the rest left compressed until it is read), so counting the decoded bytes as they
are read and stopping past the limit keeps a gzip bomb to about the limit in memory.
"""

from __future__ import annotations

import aiohttp

from services.common.errors import ApiError, upstream_error

ACCEPT_ENCODING = "gzip, deflate"


def too_large(what: str, limit: int, setting: str) -> ApiError:
    return upstream_error(
        502, f"The upstream LLM sent {what} larger than this server accepts ({limit} bytes; {setting}).",
        code="upstream_too_large",
    )


async def read_body(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole (decoded) body, or a 502 ApiError as soon as more than `max_bytes` arrived."""
    declared = response.content_length
    if declared is not None and declared > max_bytes and not response.headers.get("Content-Encoding"):
        raise too_large("an answer", max_bytes, "UPSTREAM_MAX_BYTES")
    pieces: list[bytes] = []
    size = 0
    async for piece in response.content.iter_any():
        size += len(piece)
        if size > max_bytes:
            raise too_large("an answer", max_bytes, "UPSTREAM_MAX_BYTES")
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
