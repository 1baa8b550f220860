"""The replay a console page gets when it connects: the last N requests, each folded from its events."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from services.console.kinds import role_of

# The layer's own tool calls kept per request for a console that connects later.
MAX_TOOL_EVENTS = 20


class RequestLog:
    """The last `capacity` requests, each aggregated from its events (including text so far)."""

    def __init__(self, capacity: int, max_text_chars: int = 64 * 1024) -> None:
        self.capacity = max(1, capacity)
        self.max_text_chars = max_text_chars
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._text: dict[str, list[str]] = {}
        self._text_len: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._records

    def oldest(self) -> str | None:
        """The id of the oldest request still kept."""
        return next(iter(self._records), None)

    def record(self, event: dict[str, Any]) -> None:
        """Fold one event into its request's record; O(1) per event."""
        kind = event.get("type")
        role = role_of(kind)
        rid = event.get("id")
        if not isinstance(rid, str) or role in (None, "station", "feed"):
            return
        record = self._records.get(rid)
        if record is None:
            if role not in ("request", "iss"):
                return  # the request already left the buffer (or never was in it)
            record = self._new(rid, event)
        if role == "request":
            fields = {k: v for k, v in event.items() if k not in ("type",)}
            record.update(fields)
            record["status"] = record.get("status") or "streaming"
        elif role == "iss":
            record["iss"] = {"block": event.get("block"), "state": event.get("state"), "t": event.get("t")}
        elif role == "text":
            text = event.get("text") or ""
            if not isinstance(text, str):
                text = str(text)
            used = self._text_len.get(rid, 0)
            if used < self.max_text_chars:
                piece = text[: self.max_text_chars - used]
                self._text.setdefault(rid, []).append(piece)
                self._text_len[rid] = used + len(piece)
            if len(text) + used > self.max_text_chars:
                record["text_truncated"] = True
        elif role == "tool":
            tools = record.setdefault("tools", [])
            if len(tools) < MAX_TOOL_EVENTS:
                # Its type (the page reads it through the one table, as a live event) and where it
                # fell in the answer: the characters of text kept before it.
                call = {k: event.get(k) for k in ("name", "arguments", "result", "ok", "ms", "round")}
                tools.append({"type": kind, **call, "text_at": self._text_len.get(rid, 0)})
        elif role == "outcome":
            record["status"] = kind
            record["outcome"] = {k: v for k, v in event.items() if k not in ("type", "id")}

    def _new(self, rid: str, event: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"id": rid, "t": event.get("t"), "status": "streaming"}
        self._records[rid] = record
        while len(self._records) > self.capacity:
            old, _ = self._records.popitem(last=False)
            self._text.pop(old, None)
            self._text_len.pop(old, None)
        return record

    def clear(self) -> None:
        self._records.clear()
        self._text.clear()
        self._text_len.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        """Every buffered request, oldest first, with its streamed text joined."""
        out = []
        for rid, record in self._records.items():
            parts = self._text.get(rid)
            if parts and len(parts) > 1:
                self._text[rid] = parts = ["".join(parts)]
            out.append({**record, "text": parts[0] if parts else ""})
        return out
