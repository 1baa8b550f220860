"""Chat backends: the openai-package upstream and the built-in offline responder."""

from __future__ import annotations

from config import Settings
from services.iss.queries import IssQueries
from services.llm.base import Backend


def make_backend(settings: Settings, queries: IssQueries | None = None) -> Backend:
    """The upstream when a key is set (or LLM_BACKEND=openai), else the offline responder."""
    if settings.use_openai:
        from services.llm.openai_upstream import OpenAIUpstream

        return OpenAIUpstream(settings)
    from services.llm.builtin import BuiltinResponder

    return BuiltinResponder(queries)
