"""The replay a console page gets when it connects: the last N requests, each folded from its events.

Bounded in bytes, not only in requests: a record keeps its answer's text as one growing UTF-8
buffer (the tokens joined as they arrive, never one object per token), cut at `record_bytes`
with a marker; and the whole buffer keeps at most `buffer_bytes` (each record's text plus its
other fields as encoded), the oldest records leaving first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from services.console.kinds import role_of

# The layer's own tool calls kept per request for a console that connects later.
MAX_TOOL_EVENTS = 20
# The answer's text kept per record, in UTF-8 bytes (CONSOLE_RECORD_BYTES); what the page keeps too.
RECORD_BYTES = 64 * 1024
# Every record together (CONSOLE_BUFFER_BYTES).
BUFFER_BYTES = 16 * 1024 * 1024
# What a record costs beyond its text and fields (the dict, its keys): counted so that many empty
# records cannot pass for none.
RECORD_OVERHEAD = 512


def cut_marker(dropped: int) -> str:
    """What ends a text that was cut: how much of it was not kept."""
    return f"… [{dropped} more bytes not kept]"


def _encoded_size(value: Any) -> int:
    """About the bytes `value` takes as the console's JSON."""
    try:
        return len(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))
    except TypeError:  # e.g. an integer past 64 bits
        return len(str(value))


class _Text:
    """One record's answer: a single UTF-8 buffer, its length in characters, and what was cut."""

    __slots__ = ("buffer", "chars", "dropped")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.chars = 0  # characters kept (the page counts a tool call's place in characters)
        self.dropped = 0  # bytes not kept past the bound


class RequestLog:
    """The last `capacity` requests, each aggregated from its events (including the text so far)."""

    def __init__(self, capacity: int, record_bytes: int = RECORD_BYTES, buffer_bytes: int = BUFFER_BYTES) -> None:
        self.capacity = max(1, capacity)
        self.record_bytes = max(0, record_bytes)
        self.buffer_bytes = max(1, buffer_bytes)
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._text: dict[str, _Text] = {}
        self._size: dict[str, int] = {}  # each record's bytes, as counted against buffer_bytes
        self.bytes = 0  # all records together
        self.evicted_for_bytes = 0  # records that left before their turn, to keep to buffer_bytes

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._records

    def oldest(self) -> str | None:
        """The id of the oldest request still kept."""
        return next(iter(self._records), None)

    def record(self, event: dict[str, Any]) -> None:
        """Fold one event into its request's record; O(1) per event (O(size) for a request's fields)."""
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
        if role == "text":
            self._add_text(rid, record, event.get("text"))
        elif role == "request":
            fields = {k: v for k, v in event.items() if k not in ("type",)}
            record.update(fields)
            record["status"] = record.get("status") or "streaming"
            self._grow(rid, _encoded_size(fields))
        elif role == "iss":
            iss = {"block": event.get("block"), "state": event.get("state"), "t": event.get("t")}
            record["iss"] = iss
            self._grow(rid, _encoded_size(iss))
        elif role == "tool":
            tools = record.setdefault("tools", [])
            if len(tools) < MAX_TOOL_EVENTS:
                # Its type (the page reads it through the one table, as a live event) and where it
                # fell in the answer: the characters of text kept before it.
                call = {k: event.get(k) for k in ("name", "arguments", "result", "ok", "ms", "round")}
                text = self._text.get(rid)
                entry = {"type": kind, **call, "text_at": text.chars if text is not None else 0}
                tools.append(entry)
                self._grow(rid, _encoded_size(entry))
        elif role == "outcome":
            record["status"] = kind
            outcome = {k: v for k, v in event.items() if k not in ("type", "id")}
            record["outcome"] = outcome
            self._grow(rid, _encoded_size(outcome))
        self._evict()

    def _add_text(self, rid: str, record: dict[str, Any], text: Any) -> None:
        if not text:
            return
        if not isinstance(text, str):
            text = str(text)
        kept = self._text.get(rid)
        if kept is None:
            kept = self._text[rid] = _Text()
        data = text.encode("utf-8", "replace")
        if kept.dropped:  # already cut: nothing after the cut is kept, only counted
            kept.dropped += len(data)
            return
        room = self.record_bytes - len(kept.buffer)
        if len(data) <= room:
            kept.buffer += data
            kept.chars += len(text)
            self._grow(rid, len(data))
            return
        # Past the bound: keep what fits (whole characters only) and count the rest.
        piece = data[:max(0, room)].decode("utf-8", "ignore").encode("utf-8")
        kept.buffer += piece
        kept.chars += len(piece.decode("utf-8"))
        kept.dropped += len(data) - len(piece)
        record["text_truncated"] = True
        self._grow(rid, len(piece))

    def _grow(self, rid: str, size: int) -> None:
        self._size[rid] = self._size.get(rid, 0) + size
        self.bytes += size

    def _new(self, rid: str, event: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"id": rid, "t": event.get("t"), "status": "streaming"}
        self._records[rid] = record
        self._grow(rid, RECORD_OVERHEAD)
        while len(self._records) > self.capacity:
            self._drop_oldest()
        return record

    def _evict(self) -> None:
        """Oldest records first, until all of them fit buffer_bytes (the newest one always stays)."""
        while self.bytes > self.buffer_bytes and len(self._records) > 1:
            self._drop_oldest()
            self.evicted_for_bytes += 1

    def _drop_oldest(self) -> None:
        old, _ = self._records.popitem(last=False)
        self._text.pop(old, None)
        self.bytes -= self._size.pop(old, 0)

    def clear(self) -> None:
        self._records.clear()
        self._text.clear()
        self._size.clear()
        self.bytes = 0

    def snapshot(self) -> list[dict[str, Any]]:
        """Every buffered request, oldest first, with its streamed text (a cut text ends with the marker)."""
        out = []
        for rid, record in self._records.items():
            kept = self._text.get(rid)
            text = ""
            if kept is not None:
                text = kept.buffer.decode("utf-8", "replace")
                if kept.dropped:
                    text += cut_marker(kept.dropped)
            out.append({**record, "text": text})
        return out
