"""What may leave the chat path for a console: credentials redacted, sizes and depths bounded.

Applied once, before an event reaches any hub's buffer, subscriber or (across processes) Redis.
"""

from __future__ import annotations

from typing import Any

from services.redaction import REDACTED, SECRET_KEY, redact_fields

# What the console keeps of one request's messages and parameters: enough to read and replay an
# ordinary request, bounded so a megabyte prompt or a deeply nested body cannot make every replay
# (and the event loop that encodes it) heavy.
MAX_DEPTH = 16
MAX_STRING = 16 * 1024
MAX_ITEMS = 256
MAX_REQUEST_CHARS = 64 * 1024


def sanitize(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a console may see it: a request's messages and parameters bounded and redacted,
    its headers dropped. Other events are returned as they are (the exchange puts nothing secret on them)."""
    if event.get("type") != "request":
        return event
    clean = {
        **event,
        "messages": bounded(event.get("messages")),
        "params": redact_fields(bounded(event.get("params"))),
        "upstream": redact_fields(event.get("upstream")),
    }
    clean.pop("headers", None)
    return clean


def bounded(value: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """A copy cut to MAX_DEPTH levels, MAX_ITEMS items, MAX_STRING characters a string and
    MAX_REQUEST_CHARS in all, each cut marked; keys that look like credentials are redacted."""
    budget = [MAX_REQUEST_CHARS] if budget is None else budget
    if depth > MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, str):
        room = max(0, min(MAX_STRING, budget[0]))
        budget[0] -= min(len(value), room)
        if len(value) <= room:
            return value
        return value[:room] + f"… [{len(value) - room} more characters not kept]"
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= MAX_ITEMS:
                out["…"] = f"[{len(value) - MAX_ITEMS} more keys not kept]"
                break
            secret = isinstance(key, str) and SECRET_KEY.search(key) and item
            out[key] = REDACTED if secret else bounded(item, budget, depth + 1)
        return out
    if isinstance(value, list):
        kept = [bounded(item, budget, depth + 1) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            kept.append(f"[{len(value) - MAX_ITEMS} more items not kept]")
        return kept
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        return str(value)
    return value
