"""Model names: which upstream model a request gets (LLM_MODEL, MODEL_MAP), and the list /v1/models shows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from config import Settings
from services.common.errors import ApiError

log = logging.getLogger("iss_llm.models")


def resolve_model(settings: Settings, requested: str | None) -> str:
    """LLM_MODEL when set; else the request's model through MODEL_MAP (an exact name, then `*`);
    else the request's model as it is; else DEFAULT_MODEL."""
    if settings.llm_model:
        return settings.llm_model
    mapping = dict(settings.model_map)
    if requested is not None and requested in mapping:
        return mapping[requested]
    if "*" in mapping:
        return mapping["*"]
    return requested or settings.default_model


def configured_models(settings: Settings) -> list[str]:
    """The names this server is configured with: LLM_MODEL or DEFAULT_MODEL, and MODEL_MAP's names."""
    names = [settings.llm_model or settings.default_model]
    for caller, upstream in settings.model_map:
        names += [name for name in (caller, upstream) if name != "*"]
    return list(dict.fromkeys(names))


class ModelCatalog:
    """What /v1/models lists: the upstream's own list (fetched at most once per `ttl`, one fetch at a
    time, never on the chat path), plus the names callers may use through MODEL_MAP; the configured
    names when the upstream has no list or does not answer."""

    def __init__(self, settings: Settings, fetch: Callable[[], Awaitable[list[str]]] | None) -> None:
        self.settings = settings
        self.ttl = settings.models_cache_seconds
        self._fetch = fetch
        self._cached: list[str] | None = None
        self._fetched_at = -float("inf")
        self._pending: asyncio.Future[None] | None = None
        self.source = "configuration"

    async def models(self) -> list[str]:
        if self._fetch is not None and time.monotonic() - self._fetched_at > self.ttl:
            if self._pending is None or self._pending.done():
                self._pending = asyncio.ensure_future(self._refresh())
            await asyncio.shield(self._pending)
        callers = [caller for caller, _ in self.settings.model_map if caller != "*"]
        if self._cached:
            return list(dict.fromkeys(self._cached + callers))
        return configured_models(self.settings)

    async def _refresh(self) -> None:
        assert self._fetch is not None
        try:
            self._cached = await self._fetch()
            self.source = "upstream"
        except ApiError as error:
            log.warning("the upstream's model list is not available (%s): listing the configured names",
                        error.message)
            self.source = "configuration"
        finally:
            # A failure is not retried on every request either.
            self._fetched_at = time.monotonic()
