"""In-process publish/subscribe for console events: recent requests, and batches shared by every socket.

The chat path calls `publish()` on its hot path: it is O(1) whatever the number of consoles,
never awaits and never raises. It folds the event into a ring buffer of the last N requests (the
replay a page gets when it connects) and, only while a console is connected, appends it to a
pending batch. Every `batch_interval` the batch is coalesced (token events of one request become
one), encoded to JSON once and appended to a bounded backlog of frames that all sockets share;
each socket only keeps a cursor into it. A socket that falls behind the backlog's start has lost
events: it is sent a fresh snapshot of the ring buffer instead, with how many it missed. A later
step may put Redis behind the same small interface (`publish`, `subscribe`, `snapshot`, `close`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

log = logging.getLogger("iss_llm.events")

OUTCOMES = ("done", "cancelled", "error")
_SECRET_KEY = re.compile(r"(api[_-]?key|authorization|secret|password|token$|^key$)", re.IGNORECASE)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class SubscriberPolicy:
    """How events are batched, and how far a console socket may fall behind before it is resynced."""

    batch_interval: float = 0.05
    max_frames: int = 400  # shared backlog: 20 s of batches at 20 a second
    max_bytes: int = 16 * 1024 * 1024  # shared backlog, in encoded bytes
    max_pending: int = 5000  # events waiting for the next batch before it is cut early
    max_send_bytes: int = 1024 * 1024  # what one socket is handed at a time
    stall_timeout: float = 10.0  # a socket whose write does not complete in this long is dropped


class Hub(Protocol):
    """What the chat path and the console need from a hub, in-process or (later) across processes."""

    def publish(self, event: dict[str, Any]) -> None: ...

    def subscribe(self) -> Subscription: ...

    def snapshot(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


def encode(frame: dict[str, Any]) -> str:
    """A frame as JSON text; anything orjson cannot take (e.g. a huge integer) goes through json."""
    try:
        return orjson.dumps(frame, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        pass
    try:
        return json.dumps(frame, default=str)
    except (RecursionError, ValueError, TypeError):
        # Never let one odd event take every console down: say what was lost instead.
        return json.dumps({"type": frame.get("type"), "id": frame.get("id"), "unencodable": True})


# What the console keeps of one request's messages and parameters: enough to read and replay an
# ordinary request, bounded so a megabyte prompt or a deeply nested body cannot make every replay
# (and the event loop that encodes it) heavy.
MAX_DEPTH = 16
MAX_STRING = 16 * 1024
MAX_ITEMS = 256
MAX_REQUEST_CHARS = 64 * 1024


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
            secret = isinstance(key, str) and _SECRET_KEY.search(key) and item
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


def redact(value: Any) -> Any:
    """A copy of a params/upstream mapping with anything that looks like a credential replaced."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        return _strip_userinfo(value)
    return value


def _strip_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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

    def record(self, event: dict[str, Any]) -> None:
        """Fold one event into its request's record; O(1) per event."""
        kind = event.get("type")
        rid = event.get("id")
        if not isinstance(rid, str):
            return
        record = self._records.get(rid)
        if record is None:
            if kind not in ("request", "iss"):
                return  # the request already left the buffer (or never was in it)
            record = self._new(rid, event)
        if kind == "request":
            fields = {k: v for k, v in event.items() if k not in ("type",)}
            record.update(fields)
            record["status"] = record.get("status") or "streaming"
        elif kind == "iss":
            record["iss"] = {"block": event.get("block"), "state": event.get("state"), "t": event.get("t")}
        elif kind == "tokens":
            text = event.get("text") or ""
            used = self._text_len.get(rid, 0)
            if used < self.max_text_chars:
                piece = text[: self.max_text_chars - used]
                self._text.setdefault(rid, []).append(piece)
                self._text_len[rid] = used + len(piece)
            if len(text) + used > self.max_text_chars:
                record["text_truncated"] = True
        elif kind in OUTCOMES:
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

    def snapshot(self) -> list[dict[str, Any]]:
        """Every buffered request, oldest first, with its streamed text joined."""
        out = []
        for rid, record in self._records.items():
            parts = self._text.get(rid)
            if parts and len(parts) > 1:
                self._text[rid] = parts = ["".join(parts)]
            out.append({**record, "text": parts[0] if parts else ""})
        return out


def coalesce(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events with each request's token events merged into its first one, order kept otherwise."""
    out: list[dict[str, Any]] = []
    parts: dict[int, list[str]] = {}
    first: dict[str, int] = {}
    for event in events:
        if event.get("type") == "tokens":
            index = first.get(event["id"])
            if index is not None:
                parts[index].append(event.get("text") or "")
                continue
            first[event["id"]] = len(out)
            parts[len(out)] = [event.get("text") or ""]
        out.append(event)
    for index, texts in parts.items():
        if len(texts) > 1:
            out[index] = {**out[index], "text": "".join(texts)}
    return out


class Frame(NamedTuple):
    """One encoded batch in the shared backlog."""

    seq: int
    text: str
    events_before: int  # events published into batches before this one
    events: int


class Subscription:
    """One console socket's view of the hub: a cursor into the shared backlog, nothing queued."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.policy = hub.policy
        self.closed = False
        self.dropped = 0  # live events this socket missed, in total
        self._seq = hub._next_seq
        self._events_seen = hub._events_framed
        self._snapshot_reason: str | None = None
        self._lost = 0
        self._private: dict[str, Any] | None = None

    @property
    def behind(self) -> int:
        """Frames published that this socket has not been handed yet."""
        return self.hub._next_seq - self._seq

    @property
    def fell_behind(self) -> bool:
        """Whether batches this socket was never sent have left the backlog (a resync is due)."""
        frames = self.hub._frames
        return bool(frames) and self._seq < frames[0].seq

    def push(self, event: dict[str, Any]) -> None:
        """An event for this socket alone (the latest one wins), e.g. the station's position."""
        self._private = event
        self.hub._wake()

    def resync(self) -> None:
        """Send a fresh snapshot next (the page asked, e.g. after a long pause)."""
        self._snapshot_reason = self._snapshot_reason or "requested"
        self.hub._wake()

    def drain(self) -> list[str]:
        """The messages to send now, encoded: a snapshot after a gap, else the batches not yet sent."""
        hub = self.hub
        if hub._pending and hub._flush_handle is None:
            hub.flush()  # no event loop to cut batches (a synchronous caller)
        messages: list[str] = []
        oldest = hub._frames[0] if hub._frames else None
        if oldest is not None and self._seq < oldest.seq:
            # The batches this socket had not been sent yet are gone from the backlog.
            self._lost += oldest.events_before - self._events_seen
            self._snapshot_reason = "overflow"
        if self._snapshot_reason is not None:
            hub.flush()  # what is pending is in the snapshot: it must not come again after it
            self.dropped += self._lost
            messages.append(encode({
                "type": "snapshot", "reason": self._snapshot_reason, "dropped": self._lost,
                "requests": hub.snapshot(),
            }))
            self._snapshot_reason = None
            self._lost = 0
            self._seq, self._events_seen = hub._next_seq, hub._events_framed
        elif oldest is not None and self._seq < hub._next_seq:
            size = 0
            for frame in hub._frames_from(self._seq):
                if messages and size + len(frame.text) > self.policy.max_send_bytes:
                    break
                messages.append(frame.text)
                size += len(frame.text)
                self._seq, self._events_seen = frame.seq + 1, frame.events_before + frame.events
        if self._private is not None:
            messages.append(encode({"type": "events", "events": [self._private]}))
            self._private = None
        return messages

    async def next_messages(self) -> list[str] | None:
        """Wait until there is something to send; None once the subscription is closed."""
        while not self.closed:
            messages = self.drain()
            if messages:
                return messages
            await self.hub._changed()
        return None

    def close(self) -> None:
        """Stop receiving; a waiting next_messages() returns None."""
        if self.closed:
            return
        self.closed = True
        self.hub._unsubscribe(self)
        self.hub._wake()


class EventHub:
    """Publishes events to console subscribers without ever blocking the publisher."""

    def __init__(self, buffer_size: int = 100, policy: SubscriberPolicy | None = None) -> None:
        self.buffer_size = buffer_size
        self.policy = policy or SubscriberPolicy()
        self.log = RequestLog(buffer_size)
        self.published = 0
        self._subscribers: list[Subscription] = []
        self._pending: list[dict[str, Any]] = []
        self._frames: deque[Frame] = deque()
        self._frames_bytes = 0
        self._next_seq = 0
        self._events_framed = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_urgent = False
        self._last_flush = 0.0
        self._change: asyncio.Future[None] | None = None
        self._failures = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def backlog_bytes(self) -> int:
        """Encoded bytes held for all sockets together."""
        return self._frames_bytes

    def publish(self, event: dict[str, Any]) -> None:
        """Record and queue one event for the consoles. O(1), never blocks, never raises."""
        try:
            if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                return
            if event.get("type") == "request":
                event = {
                    **event,
                    "messages": bounded(event.get("messages")),
                    "params": redact(bounded(event.get("params"))),
                    "upstream": redact(event.get("upstream")),
                }
                event.pop("headers", None)
            self.published += 1
            self.log.record(event)
            if self._subscribers:
                self._pending.append(event)
                self._schedule_flush()
        except Exception:  # the console must never break a chat stream
            self._failures += 1
            if self._failures <= 3:
                log.exception("console event dropped: could not publish it")

    def _schedule_flush(self) -> None:
        urgent = len(self._pending) >= self.policy.max_pending
        if self._flush_handle is not None and (self._flush_urgent or not urgent):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): drain() flushes
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        # The first event after a quiet spell goes out at once, later ones wait for the batch
        # window; too many waiting cut the batch at the next turn of the loop.
        delay = 0.0 if urgent else max(0.0, self._last_flush + self.policy.batch_interval - loop.time())
        self._flush_urgent = urgent
        self._flush_handle = loop.call_later(delay, self.flush)

    def flush(self) -> None:
        """Turn the pending events into one encoded batch in the shared backlog, and wake the sockets."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        self._last_flush = _loop_time() or 0.0
        pending, self._pending = self._pending, []
        events = coalesce(pending)
        text = encode({"type": "events", "events": events})
        self._frames.append(Frame(self._next_seq, text, self._events_framed, len(pending)))
        self._next_seq += 1
        self._events_framed += len(pending)
        self._frames_bytes += len(text)
        while len(self._frames) > 1 and (
            len(self._frames) > self.policy.max_frames or self._frames_bytes > self.policy.max_bytes
        ):
            self._frames_bytes -= len(self._frames.popleft().text)
        self._wake()

    def _frames_from(self, seq: int) -> Iterator[Frame]:
        start = seq - self._frames[0].seq
        for index in range(max(0, start), len(self._frames)):
            yield self._frames[index]

    def _changed(self) -> asyncio.Future[None]:
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        return self._change

    def _wake(self) -> None:
        if self._change is not None and not self._change.done():
            self._change.set_result(None)

    def subscribe(self) -> Subscription:
        """A new subscriber; read the replay with snapshot() right after, in the same tick."""
        # Whatever is pending is already in the ring buffer, so it must not reach the new socket
        # twice: batch it now, and start the new socket after it.
        self.flush()
        subscription = Subscription(self)
        self._subscribers.append(subscription)
        return subscription

    def snapshot(self) -> list[dict[str, Any]]:
        """The buffered requests, oldest first, aggregated (request, ISS block, text, outcome)."""
        return self.log.snapshot()

    def _unsubscribe(self, subscription: Subscription) -> None:
        try:
            self._subscribers.remove(subscription)
        except ValueError:
            pass
        if not self._subscribers:
            self._pending.clear()
            self._frames.clear()
            self._frames_bytes = 0

    async def close(self) -> None:
        """Stop background work and drop subscribers."""
        for subscription in list(self._subscribers):
            subscription.close()
        self._subscribers.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._wake()


def _loop_time() -> float | None:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return None
