"""In-process publish/subscribe for console events: a ring buffer of recent requests and bounded queues.

The chat path calls `publish()` on its hot path, so publishing is O(subscribers), never awaits,
never raises, and with no console connected it only updates the ring buffer. Each subscriber
(one console socket) gets its own bounded queue; when a socket falls behind, its queue is thrown
away and the socket is sent a fresh snapshot of the ring buffer instead, so it loses live events
(and is told how many) but never blocks the publisher or grows without bound. A later step may put
Redis behind the same small interface (`publish`, `subscribe`, `snapshot`, `close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

log = logging.getLogger("iss_llm.events")

OUTCOMES = ("done", "cancelled", "error")
_SECRET_KEY = re.compile(r"(api[_-]?key|authorization|secret|password|token$|^key$)", re.IGNORECASE)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class SubscriberPolicy:
    """How much one console socket may fall behind before it is resynced or dropped."""

    max_events: int = 2000
    max_bytes: int = 8 * 1024 * 1024
    batch_interval: float = 0.05
    stall_timeout: float = 10.0


class Hub(Protocol):
    """What the chat path and the console need from a hub, in-process or (later) across processes."""

    def publish(self, event: dict[str, Any]) -> None: ...

    def subscribe(self) -> Subscription: ...

    def snapshot(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


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


def _approx_size(event: dict[str, Any]) -> int:
    """A cheap size estimate (string lengths of message contents), to bound queued bytes."""
    size = 200
    for message in event.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            size += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    params = event.get("params")
    if params:
        try:
            size += len(orjson.dumps(params, default=str))
        except TypeError:
            size += 4096
    text = event.get("text")
    if isinstance(text, str):
        size += len(text)
    block = event.get("block")
    if isinstance(block, str):
        size += len(block)
    return size


class RequestLog:
    """The last `capacity` requests, each aggregated from its events (including text so far)."""

    def __init__(self, capacity: int, max_text_chars: int = 256 * 1024) -> None:
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


class Subscription:
    """One subscriber's bounded queue; token events for the same request coalesce while queued."""

    def __init__(self, hub: EventHub, policy: SubscriberPolicy) -> None:
        self.hub = hub
        self.policy = policy
        self.dropped = 0  # live events this subscriber lost to overflow, in total
        self.resyncs = 0
        self.closed = False
        self._queue: deque[dict[str, Any]] = deque()
        self._bytes = 0
        self._tokens: dict[str, dict[str, Any]] = {}  # request id -> its queued tokens event
        self._needs_snapshot = False
        self._snapshot_reason = "overflow"
        self._lost_since_snapshot = 0
        self._wakeup = asyncio.Event()
        self._pressure = asyncio.Event()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def offer(self, event: dict[str, Any], size: int | None = None) -> None:
        """Queue one event without blocking; overflowing throws the queue away for a resync."""
        if self.closed:
            return
        if self._needs_snapshot:
            # The coming snapshot is taken from the ring buffer, which already holds this event.
            if self._snapshot_reason == "overflow":
                self._lost_since_snapshot += 1
                self.dropped += 1
            return
        if event.get("type") == "tokens":
            queued = self._tokens.get(event.get("id"))  # type: ignore[arg-type]
            if queued is not None:
                text = event.get("text") or ""
                queued["_parts"].append(text)
                self._bytes += len(text)
                if self._bytes > self.policy.max_bytes:
                    self._overflow()
                return
            event = {**event, "_parts": [event.get("text") or ""]}
            self._tokens[event["id"]] = event
        if size is None:
            size = _approx_size(event)
        self._queue.append(event)
        self._bytes += size
        if len(self._queue) > self.policy.max_events or self._bytes > self.policy.max_bytes:
            self._overflow()
        elif len(self._queue) * 2 > self.policy.max_events or self._bytes * 2 > self.policy.max_bytes:
            self._pressure.set()  # half full: cut the batch window short
        self._wakeup.set()

    def _overflow(self) -> None:
        lost = len(self._queue)
        self._lost_since_snapshot += lost
        self.dropped += lost
        self._replace_with_snapshot("overflow")

    def resync(self) -> None:
        """Replace whatever is queued with a fresh snapshot (the page asked, e.g. after a pause)."""
        if not self._needs_snapshot:
            self._replace_with_snapshot("requested")

    def _replace_with_snapshot(self, reason: str) -> None:
        self._queue.clear()
        self._tokens.clear()
        self._bytes = 0
        self._needs_snapshot = True
        self._snapshot_reason = reason
        self._wakeup.set()

    def drain(self) -> dict[str, Any] | None:
        """The next frame to send (a batch of events, or a snapshot after overflow), or None."""
        if self._needs_snapshot:
            self._needs_snapshot = False
            lost, self._lost_since_snapshot = self._lost_since_snapshot, 0
            self.resyncs += 1
            requests = self.hub.snapshot()
            return {"type": "snapshot", "reason": self._snapshot_reason, "dropped": lost, "requests": requests}
        if not self._queue:
            return None
        events = []
        for event in self._queue:
            parts = event.pop("_parts", None)
            if parts is not None:
                event["text"] = "".join(parts)
            events.append(event)
        self._queue.clear()
        self._tokens.clear()
        self._bytes = 0
        return {"type": "events", "events": events}

    async def batch_window(self) -> None:
        """Wait out the batch interval, or less once the queue is half full."""
        self._pressure.clear()
        if self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pressure.wait(), self.policy.batch_interval)

    async def next_frame(self) -> dict[str, Any] | None:
        """Wait until there is something to send; None once the subscription is closed."""
        while not self.closed:
            frame = self.drain()
            if frame is not None:
                return frame
            self._wakeup.clear()
            await self._wakeup.wait()
        return None

    def close(self) -> None:
        """Stop receiving; a waiting next_frame() returns None."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._tokens.clear()
        self._wakeup.set()
        self._pressure.set()
        self.hub._unsubscribe(self)


class EventHub:
    """Publishes events to console subscribers without ever blocking the publisher."""

    def __init__(self, buffer_size: int = 100, policy: SubscriberPolicy | None = None) -> None:
        self.buffer_size = buffer_size
        self.policy = policy or SubscriberPolicy()
        self.log = RequestLog(buffer_size)
        self._subscribers: list[Subscription] = []
        self.published = 0
        self._failures = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        """Record and fan out one event. Never blocks, never raises."""
        try:
            if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                return
            if event.get("type") == "request":
                event = {
                    **event,
                    "params": redact(event.get("params")),
                    "upstream": redact(event.get("upstream")),
                }
                event.pop("headers", None)
            self.published += 1
            self.log.record(event)
        except Exception:  # the console must never break a chat stream
            self._failed()
            return
        if not self._subscribers:
            return
        try:
            size = _approx_size(event)  # once for all subscribers
        except Exception:
            size = 4096
        for subscriber in self._subscribers:
            try:
                subscriber.offer(event, size)
            except Exception:
                self._failed()

    def _failed(self) -> None:
        self._failures += 1
        if self._failures <= 3:
            log.exception("console event dropped: could not publish it")

    def subscribe(self) -> Subscription:
        """A new subscriber queue; read the replay with snapshot() right after, in the same tick."""
        subscription = Subscription(self, self.policy)
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

    async def close(self) -> None:
        """Stop background work and drop subscribers."""
        for subscription in list(self._subscribers):
            subscription.close()
        self._subscribers.clear()
