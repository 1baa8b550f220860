"""Chat backends: the upstream LLM (over aiohttp) and the built-in offline responder."""

from __future__ import annotations

from config import Settings
from services.iss.queries import IssQueries
from services.upstream.base import Backend


def make_backend(settings: Settings, queries: IssQueries | None = None) -> Backend:
    """The whole backend chain: the upstream when a key is set (or LLM_BACKEND=openai), wrapped in the
    layer's tool rounds when ISS_TOOLS is on; else the offline responder."""
    if settings.use_openai:
        from services.upstream.openai_upstream import OpenAIUpstream

        upstream: Backend = OpenAIUpstream(settings)
        if settings.otel_endpoint:
            from services.upstream.traced import TracedUpstream

            upstream = TracedUpstream(upstream)  # a span per upstream round (OTEL_EXPORTER_OTLP_ENDPOINT)
        if queries is not None and settings.iss_tools:
            from services.iss.tools import IssTools
            from services.upstream.tool_rounds import ToolRounds

            return ToolRounds(upstream, IssTools(queries, settings.iss_tool_timeout), settings.iss_tool_rounds,
                              max_calls=settings.iss_tool_max_calls, result_bytes=settings.iss_tool_result_bytes)
        return upstream
    from services.upstream.builtin import BuiltinResponder

    return BuiltinResponder(queries)
