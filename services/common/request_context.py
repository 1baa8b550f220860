"""The request being served, for every log line and the upstream call: a context variable.

Set once when a handler starts (ApiHandler.prepare); each request runs in a task of its own, so
the value follows it into the relay, the upstream client and every log record it emits, and
never into another request's.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

MAX_REQUEST_ID = 128
# Ids in the wild: UUIDs, hex, base64, AWS/W3C-style ("Root=1-5759e988-bd86..."): kept; anything else
# (spaces, quotes, control characters, non-ASCII) is dropped, so an id is safe in a header and a log.
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._:=+/@\-]")
MAX_CONVERSATION_ID = 128
_NOT_IN_CONVERSATION_ID = re.compile(r"[^A-Za-z0-9._:\-]")


@dataclass(slots=True)
class RequestContext:
    """What every log line of one request carries."""

    request_id: str
    route: str
    conversation_id: str | None = None
    key_name: str | None = None  # the name of the caller's key (never the key)


_current: ContextVar[RequestContext | None] = ContextVar("iss_llm_request", default=None)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def sanitized_request_id(header: str | None) -> str | None:
    """The caller's X-Request-Id, unsafe characters dropped, cut to MAX_REQUEST_ID; None if nothing is left."""
    if not header:
        return None
    return _NOT_ALLOWED.sub("", header[: MAX_REQUEST_ID * 4])[:MAX_REQUEST_ID] or None


def sanitized_conversation_id(header: str | None) -> str | None:
    """The caller's conversation-id (Tavus sends one per conversation), unsafe characters dropped, cut
    to MAX_CONVERSATION_ID; None if nothing is left."""
    if not header:
        return None
    return _NOT_IN_CONVERSATION_ID.sub("", header[: MAX_CONVERSATION_ID * 4])[:MAX_CONVERSATION_ID] or None


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-Id, sanitized, else a new id."""
    return sanitized_request_id(header) or new_request_id()


def begin(request_id: str, route: str) -> RequestContext:
    """Bind a request to the current task (and the tasks it starts from now on)."""
    context = RequestContext(request_id, route)
    _current.set(context)
    return context


def current() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None
