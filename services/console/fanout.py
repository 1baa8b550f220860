"""Fan-out to the console sockets of one process: shared encoded batches, one cursor per socket.

`Fanout.publish()` is O(1) whatever the number of sockets, never awaits and never raises. It
folds the event into the replay buffer (`RequestLog`) and, only while a socket is subscribed,
appends it to a pending batch. Every `batch_interval` the batch is coalesced (token events of one
request become one), encoded to JSON once and appended to a bounded backlog of frames that all
sockets share; each `Subscription` only keeps a cursor into it. A socket that falls behind the
backlog's start has lost events: it is sent a fresh snapshot of the replay buffer instead, with
how many it missed. Every hub implementation feeds one of these with already sanitized events.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from services.console.kinds import PUSHES, role_of
from services.console.replay import BUFFER_BYTES, RECORD_BYTES, RequestLog

log = logging.getLogger("iss_llm.events")


@dataclass(frozen=True)
class SubscriberPolicy:
    """How events are batched, and how far a console socket may fall behind before it is resynced."""

    batch_interval: float = 0.05
    max_frames: int = 400  # shared backlog: 20 s of batches at 20 a second
    max_bytes: int = 16 * 1024 * 1024  # shared backlog, in encoded bytes
    max_pending: int = 5000  # events waiting for the next batch before it is cut early
    max_send_bytes: int = 1024 * 1024  # what one socket is handed at a time
    stall_timeout: float = 10.0  # a socket whose write does not complete in this long is dropped


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


def coalesce(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events with each run of a request's token events merged into the run's first one; any other
    event of that request (a tool call mid-answer) ends the run, so every request's events keep their order."""
    out: list[dict[str, Any]] = []
    parts: dict[int, list[str]] = {}
    first: dict[str, int] = {}
    for event in events:
        if role_of(event.get("type")) == "text" and isinstance(event.get("text"), str):
            index = first.get(event["id"])
            if index is not None:
                parts[index].append(event["text"])
                continue
            first[event["id"]] = len(out)
            parts[len(out)] = [event["text"]]
        elif isinstance(event.get("id"), str):
            first.pop(event["id"], None)
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


class Cursor(NamedTuple):
    """A position in the backlog: the next frame's number and the events framed before it."""

    seq: int
    events: int


class Fanout:
    """The replay buffer and the shared backlog of one process, and its sockets' wake-ups."""

    def __init__(
        self, buffer_size: int, policy: SubscriberPolicy | None = None, *,
        record_bytes: int = RECORD_BYTES, buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.buffer_size = buffer_size
        self.policy = policy or SubscriberPolicy()
        # The replay: at most buffer_size requests and buffer_bytes in all, record_bytes of text each.
        self.log = RequestLog(buffer_size, record_bytes, buffer_bytes)
        self.published = 0
        self.latest: dict[str, dict[str, Any]] = {}  # the latest push of each kind, for new sockets
        self._subscriptions: list[Subscription] = []
        self._pending: list[dict[str, Any]] = []
        self._frames: deque[Frame] = deque()
        self._frames_bytes = 0
        self._next_seq = 0
        self._events_framed = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_urgent = False
        self._last_flush = 0.0
        self._change: asyncio.Future[None] | None = None
        # Told (reason, events missed) whenever a socket is sent a snapshot instead of batches (metrics).
        self.on_resync: Callable[[str, int], None] | None = None

    # ---- what hubs call ----

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    @property
    def backlog_bytes(self) -> int:
        """Encoded bytes held for all sockets together."""
        return self._frames_bytes

    @property
    def backlog_frames(self) -> int:
        return len(self._frames)

    def publish(self, event: dict[str, Any]) -> None:
        """Record one (sanitized) event and queue it for the sockets. O(1), never blocks."""
        self.published += 1
        role = role_of(event.get("type"))
        if role in PUSHES:
            self.latest[role] = event
        else:
            self.log.record(event)
        if self._subscriptions:
            self._pending.append(event)
            self._schedule_flush()

    def subscribe(self) -> Subscription:
        """A new socket's cursor, at the end of the backlog; read the replay with snapshot() in the same tick."""
        # Whatever is pending is already in the replay buffer, so it must not reach the new socket
        # twice: batch it now, and start the new socket after it.
        self.flush()
        subscription = Subscription(self)
        self._subscriptions.append(subscription)
        return subscription

    def snapshot(self) -> list[dict[str, Any]]:
        return self.log.snapshot()

    def rebuild(self, events: list[dict[str, Any]], reason: str) -> None:
        """Replace the replay buffer with one folded from `events`; every socket gets it as a snapshot."""
        self.log.clear()
        for event in events:
            self.log.record(event)
        self.resync_all(reason)

    def resync_all(self, reason: str) -> None:
        """Every socket gets a fresh snapshot next (the replay buffer was rebuilt)."""
        for subscription in self._subscriptions:
            subscription.resync(reason)

    def flush(self) -> None:
        """Turn the pending events into one encoded batch in the shared backlog, and wake the sockets."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        self._last_flush = _loop_time() or 0.0
        pending, self._pending = self._pending, []
        text = encode({"type": "events", "events": coalesce(pending)})
        self._frames.append(Frame(self._next_seq, text, self._events_framed, len(pending)))
        self._next_seq += 1
        self._events_framed += len(pending)
        self._frames_bytes += len(text)
        while len(self._frames) > 1 and (
            len(self._frames) > self.policy.max_frames or self._frames_bytes > self.policy.max_bytes
        ):
            self._frames_bytes -= len(self._frames.popleft().text)
        self.wake()

    def close(self) -> None:
        """Drop every socket (their waits return None) and stop batching."""
        for subscription in list(self._subscriptions):
            subscription.close()
        self._subscriptions.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.wake()

    # ---- what subscriptions call ----

    @property
    def head(self) -> Cursor:
        """Where a socket that has everything stands."""
        return Cursor(self._next_seq, self._events_framed)

    def oldest(self) -> Frame | None:
        return self._frames[0] if self._frames else None

    def frames_from(self, seq: int) -> Iterator[Frame]:
        if not self._frames:
            return
        start = seq - self._frames[0].seq
        for index in range(max(0, start), len(self._frames)):
            yield self._frames[index]

    def cut_if_unscheduled(self) -> None:
        """Batch what is pending when no loop will (a synchronous caller)."""
        if self._pending and self._flush_handle is None:
            self.flush()

    def changed(self) -> asyncio.Future[None]:
        """Resolves at the next change (a batch, a resync, a close)."""
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        return self._change

    def wake(self) -> None:
        if self._change is not None and not self._change.done():
            self._change.set_result(None)

    def unsubscribe(self, subscription: Subscription) -> None:
        try:
            self._subscriptions.remove(subscription)
        except ValueError:
            pass
        if not self._subscriptions:
            self._pending.clear()
            self._frames.clear()
            self._frames_bytes = 0
        self.wake()

    # ---- batching ----

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


class Subscription:
    """One console socket's view: a cursor into the shared backlog, nothing queued of its own."""

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self.policy = fanout.policy
        self.closed = False
        self.dropped = 0  # live events this socket missed, in total
        self._cursor = fanout.head
        self._snapshot_reason: str | None = None
        self._lost = 0
        # The latest pushes (station position, feed state) go to a new socket right after its replay.
        self._greeting = list(fanout.latest.values())

    @property
    def behind(self) -> int:
        """Frames published that this socket has not been handed yet."""
        return self._fanout.head.seq - self._cursor.seq

    @property
    def fell_behind(self) -> bool:
        """Whether batches this socket was never sent have left the backlog (a resync is due)."""
        oldest = self._fanout.oldest()
        return oldest is not None and self._cursor.seq < oldest.seq

    def resync(self, reason: str = "requested") -> None:
        """Send a fresh snapshot next (the page asked, e.g. after a long pause)."""
        self._snapshot_reason = self._snapshot_reason or reason
        self._fanout.wake()

    def drain(self) -> list[str]:
        """The messages to send now, encoded: a snapshot after a gap, else the batches not yet sent."""
        fanout = self._fanout
        fanout.cut_if_unscheduled()
        messages: list[str] = []
        oldest = fanout.oldest()
        if oldest is not None and self._cursor.seq < oldest.seq:
            # The batches this socket had not been sent yet are gone from the backlog.
            self._lost += oldest.events_before - self._cursor.events
            self._snapshot_reason = "overflow"
        if self._snapshot_reason is not None:
            fanout.flush()  # what is pending is in the snapshot: it must not come again after it
            self.dropped += self._lost
            if fanout.on_resync is not None:
                fanout.on_resync(self._snapshot_reason, self._lost)
            messages.append(encode({
                "type": "snapshot", "reason": self._snapshot_reason, "dropped": self._lost,
                "requests": fanout.snapshot(),
            }))
            self._snapshot_reason = None
            self._lost = 0
            self._cursor = fanout.head
            self._greeting = list(fanout.latest.values())  # pushes in the skipped batches, again
        elif oldest is not None and self._cursor.seq < fanout.head.seq:
            size = 0
            for frame in fanout.frames_from(self._cursor.seq):
                if messages and size + len(frame.text) > self.policy.max_send_bytes:
                    break
                messages.append(frame.text)
                size += len(frame.text)
                self._cursor = Cursor(frame.seq + 1, frame.events_before + frame.events)
        if self._greeting:
            messages.append(encode({"type": "events", "events": self._greeting}))
            self._greeting = []
        return messages

    async def next_messages(self) -> list[str] | None:
        """Wait until there is something to send; None once the subscription is closed."""
        while not self.closed:
            messages = self.drain()
            if messages:
                return messages
            await self._fanout.changed()
        return None

    def close(self) -> None:
        """Stop receiving; a waiting next_messages() returns None."""
        if self.closed:
            return
        self.closed = True
        self._fanout.unsubscribe(self)


def _loop_time() -> float | None:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return None
