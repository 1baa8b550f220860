"""What may leave the chat path for a console: credentials redacted, sizes and depths bounded.

Applied once, before an event reaches any hub's buffer, subscriber or (across processes) Redis.
"""

from __future__ import annotations

from typing import Any

from services.ops.redaction import REDACTED, SECRET_KEY, redact_fields

# What the console keeps of one request's messages and parameters: enough to read and replay an
# ordinary request, bounded so a megabyte prompt or a deeply nested body cannot make every replay
# (and the event loop that encodes it) heavy.
MAX_DEPTH = 16
MAX_STRING = 16 * 1024
MAX_ITEMS = 256
MAX_REQUEST_CHARS = 64 * 1024
MAX_KEY = 256  # a mapping key's characters
MAX_NAME = 256  # a model name's


def _bounded_key(key: Any, budget: list[int]) -> Any:
    """A mapping key cut to MAX_KEY characters (its length counts against the budget too)."""
    if not isinstance(key, str):
        return key if isinstance(key, (int, float, bool)) or key is None else str(key)[:MAX_KEY]
    budget[0] -= min(len(key), MAX_KEY)
    return key if len(key) <= MAX_KEY else key[:MAX_KEY] + "…"


def sanitize(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a console may see it: a request's messages and parameters bounded and redacted,
    its headers dropped. Other events are returned as they are (the exchange puts nothing secret on them)."""
    if event.get("type") != "request":
        return event
    clean = {
        **event,
        "messages": bounded(event.get("messages")),
        "params": redact_fields(bounded(event.get("params"))),
        "upstream": redact_fields(bounded(event.get("upstream"))),
    }
    for name in ("model", "requested_model"):
        if isinstance(clean.get(name), str):
            clean[name] = clean[name][:MAX_NAME]
    clean.pop("headers", None)
    return clean


def bounded(value: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """A copy cut to MAX_DEPTH levels, MAX_ITEMS items, MAX_STRING characters a string and
    MAX_REQUEST_CHARS in all, each cut marked; keys that look like credentials are redacted.

    Every item costs at least one unit of the budget, and once it is spent the rest of a list or
    mapping is one marker: the copy stays about MAX_REQUEST_CHARS whatever the shape of the input
    (a million one-character strings do not become a million markers).
    """
    budget = [MAX_REQUEST_CHARS] if budget is None else budget
    if depth > MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, str):
        room = max(0, min(MAX_STRING, budget[0]))
        budget[0] -= min(len(value), room) + 1
        if len(value) <= room:
            return value
        return value[:room] + f"… [{len(value) - room} more characters not kept]"
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= MAX_ITEMS or budget[0] <= 0:
                out["…"] = f"[{len(value) - index} more keys not kept]"
                break
            budget[0] -= 1
            secret = isinstance(key, str) and SECRET_KEY.search(key) and item
            key = _bounded_key(key, budget)
            out[key] = REDACTED if secret else bounded(item, budget, depth + 1)
        return out
    if isinstance(value, list):
        kept = []
        for index, item in enumerate(value):
            if index >= MAX_ITEMS or budget[0] <= 0:
                kept.append(f"[{len(value) - index} more items not kept]")
                break
            budget[0] -= 1
            kept.append(bounded(item, budget, depth + 1))
        return kept
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        return str(value)
    return value
