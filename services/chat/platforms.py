"""Agent platforms' request shapes: who is calling, its conversation id, and what goes upstream.

Each platform documents what it adds to an OpenAI chat-completions request (docs/platforms.md,
tests/data/fixtures/<platform>/):

- Tavus CVI: the conversation id in a `conversation-id` header; the persona's `extra_body` fields
  (temperature, top_p...) merged into the body; nothing else of its own.
- Vapi (custom LLM): `call`, `phoneNumber`, `customer` and, with metadataSendMode `variable`
  (its default), `metadata` in the body; with `destructured`, the metadata's own fields spread on
  the body instead. The conversation id is `call.id`. None of it is for the model: it never goes
  upstream unless named in UPSTREAM_EXTRA_PARAMS, and neither does any other field that is not an
  OpenAI parameter (in `destructured` mode such a field is the metadata's).
- The plain OpenAI shape: a `conversation-id` header if the caller sends one.

PLATFORM=auto recognises the platform from the request (a `call` object with an id: Vapi; a
`conversation-id` header: Tavus; else OpenAI); a platform's name forces its profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config import Settings
from services.common.openai_format import select_params
from services.common.request_context import sanitized_conversation_id

# What Vapi adds to the body with metadataSendMode `variable` or `destructured`.
VAPI_FIELDS = frozenset({"call", "phoneNumber", "customer", "metadata"})
MAX_LEFT_OUT = 32  # names of fields left out, as the console shows them
MAX_FIELD_NAME = 64


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its platform, its conversation id, and the parameters that go upstream."""

    platform: str
    conversation_id: str | None
    params: dict[str, Any]
    left_out: list[str]  # names of the fields kept from the upstream (bounded, for the console)


class Platforms:
    """Reads a chat request as its platform documents it (PLATFORM, UPSTREAM_PARAMS, UPSTREAM_EXTRA_PARAMS)."""

    def __init__(self, settings: Settings) -> None:
        self.forced = None if settings.platform == "auto" else settings.platform
        self.openai_only = settings.upstream_params == "openai"
        self.keep = frozenset(settings.upstream_extra_params)

    def platform_of(self, headers: Mapping[str, str], params: Mapping[str, Any]) -> str:
        if self.forced is not None:
            return self.forced
        if _vapi_call_id(params) is not None:
            return "vapi"
        if headers.get("conversation-id"):
            return "tavus"
        return "openai"

    def read(self, headers: Mapping[str, str], params: Mapping[str, Any]) -> Caller:
        """The caller's platform and conversation id, and `params` (a parsed request's fields other
        than messages, model and stream) narrowed to what goes upstream."""
        platform = self.platform_of(headers, params)
        if platform == "vapi":
            conversation_id = sanitized_conversation_id(_vapi_call_id(params))
            sent, left_out = select_params(params, openai_only=True, drop=VAPI_FIELDS, keep=self.keep)
        else:
            conversation_id = sanitized_conversation_id(headers.get("conversation-id"))
            sent, left_out = select_params(params, openai_only=self.openai_only, keep=self.keep)
        return Caller(platform, conversation_id, sent,
                      [name[:MAX_FIELD_NAME] for name in left_out[:MAX_LEFT_OUT]])


def _vapi_call_id(params: Mapping[str, Any]) -> str | None:
    call = params.get("call")
    if not isinstance(call, dict):
        return None
    call_id = call.get("id")
    return call_id if isinstance(call_id, str) and call_id else None
