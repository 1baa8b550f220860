"""The upstream client driven directly (no server in between), against fakes on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from config import Settings
from services.common.errors import ApiError
from services.upstream.openai_upstream import OpenAIUpstream
from tests.conftest import UPSTREAM_KEY

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


def params(**fake: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES}
    if fake:
        body["x_fake"] = fake
    return body


@asynccontextmanager
async def upstream_for(base_url: str, **settings: Any) -> AsyncIterator[OpenAIUpstream]:
    values: dict[str, Any] = {"llm_backend": "openai", "openai_api_key": UPSTREAM_KEY, "openai_base_url": base_url,
                              "upstream_timeout": 5.0, **settings}
    upstream = OpenAIUpstream(Settings(**values))
    try:
        yield upstream
    finally:
        await upstream.close()


async def streamed(upstream: OpenAIUpstream, body: dict[str, Any]) -> tuple[list[bytes], ApiError | None]:
    """The chunks' bytes a stream yielded, and the error it ended with (None when it ended well)."""
    chunks: list[bytes] = []
    try:
        async for chunk in upstream.stream(body, None):
            chunks.append(chunk.raw)
    except ApiError as error:
        return chunks, error
    return chunks, None
