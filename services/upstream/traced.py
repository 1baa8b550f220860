"""A span per upstream round: the upstream backend wrapped, when tracing is on (services/ops/tracing.py).

make_backend puts it right around the upstream, inside the tool rounds, so each request the tool
rounds make upstream is one span, under the chat request's span; the round's `traceparent` goes out
with the request (BoundedTransport adds tracing.upstream_headers()).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from services.common.openai_format import NOT_JSON, Chunk
from services.iss.state import IssState
from services.ops import tracing
from services.upstream.base import Backend, ToolLog


class TracedUpstream:
    """A Backend: `inner`, each call to it recorded as an upstream round's span."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # list_models and whatever else the upstream offers

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    async def close(self) -> None:
        await self.inner.close()

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncGenerator[Chunk, None]:
        round_ = tracing.current().round(params)
        try:
            async with contextlib.aclosing(self.inner.stream(params, iss, tools)) as upstream:
                async for payload in upstream:
                    data = payload.data
                    if data is not NOT_JSON:
                        round_.chunk(data)
                    yield payload
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the caller left: not the upstream's failure
        except BaseException as error:
            round_.fail(error)
            raise
        finally:
            round_.end()

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None) -> bytes:
        import orjson

        round_ = tracing.current().round(params)
        try:
            body = await self.inner.complete(params, iss, tools)
            try:
                round_.completion(orjson.loads(body))
            except orjson.JSONDecodeError:
                pass
            return body
        except BaseException as error:
            round_.fail(error)
            raise
        finally:
            round_.end()
