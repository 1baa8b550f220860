"""The hub across workers and hosts: every worker's events through one Redis Stream, read by every worker.

Publishing stays O(1) and never waits: a sanitized event is appended to a bounded outbox that one
writer task empties every batch window into a single XADD (so one request's events keep their
order). One reader task per worker follows the stream (XREAD BLOCK) and feeds this worker's
`Fanout`, so a console socket on any worker sees every worker's requests; the replay buffer is
folded from the same stream, so every worker replays the same history. The stream is trimmed to
the requests the console buffer holds (XTRIM MINID at the oldest one's first entry), with a hard
cap on entries as well.

When Redis is down or slow (a command past its timeout), the hub says so to the consoles (a
"cluster" push), shows this worker's own requests meanwhile, and reconnects with back-off (growing
across connect-then-fail cycles, e.g. a Redis at maxmemory refusing every write; the lines saying
so at most once a minute); once back, every console gets a snapshot of the cluster's buffer again.

What comes back from Redis is data anyone with access to it may have written: an entry longer than
MAX_ENTRY_BYTES is dropped before it is decoded (counted, logged once a minute), and only events of
a known type with a short string id are kept, a request's fields bounded again as on the chat path.
This worker's own entries are cut to fit: a batch's token runs are joined, a batch too long split.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as redis
from redis.typing import XReadResponse

from services.common.futures import within
from services.console.fanout import SubscriberPolicy, Subscription, coalesce, encode
from services.console.hub import Hub
from services.console.kinds import PUSHES, role_of
from services.console.replay import BUFFER_BYTES, RECORD_BYTES
from services.console.sanitize import sanitize
from services.ops.redis_link import UNAVAILABLE, Backoff, LogEvery, client, describe, where

log = logging.getLogger("iss_llm.events")

MAX_OUTBOX = 20_000  # events waiting for Redis; past it new ones are dropped (and counted)
MAX_STREAM_ENTRIES = 50_000  # hard cap on the stream, whatever the trimming by request does
READ_BLOCK_MS = 1000
READ_COUNT = 200
FIELD = b"e"
# One stream entry's value, read or written: past it, an entry read is dropped undecoded.
MAX_ENTRY_BYTES = 1024 * 1024
MAX_ID_CHARS = 128  # an event's request id


Entry = tuple[bytes, dict[bytes, bytes]]


def _entries(raw: Iterable[Any] | None) -> list[Entry]:
    """A stream range as this hub reads it: (id, fields), bytes (the client does not decode).

    redis-py types an entry's id and fields as possibly None or str (decoded clients, deleted
    entries of a claim); such an entry carries no event for this hub and is skipped."""
    return [
        (entry_id, fields)
        for entry_id, fields in raw or ()
        if isinstance(entry_id, bytes) and isinstance(fields, dict)
    ]


def _read_entries(reply: XReadResponse | None) -> list[Entry]:
    """The entries of an XREAD reply: [[stream, entries]] in RESP2, the protocol of
    services.ops.redis_link.client (RESP3's mapping is never asked for)."""
    if not isinstance(reply, list):
        return []
    return [entry for _stream, entries in reply for entry in _entries(entries)]


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisHub(Hub):
    """Console events of every worker of every host, through a Redis Stream."""

    def __init__(
        self,
        url: str,
        buffer_size: int = 100,
        policy: SubscriberPolicy | None = None,
        *,
        key: str = "iss_llm:console",
        timeout: float = 1.0,
        max_outbox: int = MAX_OUTBOX,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        record_bytes: int = RECORD_BYTES,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        super().__init__(buffer_size, policy, record_bytes=record_bytes, buffer_bytes=buffer_bytes)
        self.url = url
        self.key = key
        self.timeout = timeout
        self.max_outbox = max_outbox
        self.connected = False
        self.dropped = 0  # events lost because the outbox was full
        self.max_entry_bytes = max_entry_bytes
        self.oversize = 0  # stream entries read and dropped undecoded: longer than max_entry_bytes
        self.unreadable = 0  # stream entries (or events in them) that were not this hub's shape
        self._oversize_log = LogEvery()
        self._link_log = LogEvery()  # the "lost" line; its "back" line only when it was logged
        self._lost_logged = False
        self._outbox: deque[dict[str, Any]] = deque()
        self._outbox_ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._writing = False
        self._client: redis.Redis | None = None
        self._reader: redis.Redis | None = None  # its own connection: XREAD blocks past the command timeout
        self._last_id = b"0-0"
        self._first_entry: OrderedDict[str, bytes] = OrderedDict()  # request id -> its first entry
        self._trimmed_to: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._backoff = Backoff()
        self._down_since: float | None = None

    # ---- the chat path ----

    def _deliver(self, event: dict[str, Any]) -> None:
        if role_of(event.get("type")) == "request":
            event = {**event, "worker": self.worker}
        if not self.connected:
            # No cluster feed: this worker's consoles still see this worker's requests.
            self.fanout.publish(event)
            return
        if len(self._outbox) >= self.max_outbox:
            self.dropped += 1
            if self.dropped in (1, 100, 10_000):
                log.warning("console events dropped: %d waiting for Redis", len(self._outbox))
            return
        self._outbox.append(event)
        if not self._outbox_ready.is_set():
            self._outbox_ready.set()

    # ---- the interface ----

    def status(self) -> dict[str, Any]:
        return {"feed": "cluster" if self.connected else "cluster-down", "worker": self.worker}

    async def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._run())

    def subscribe(self) -> Subscription:
        # A console may open before start() was awaited (e.g. a test app): begin linking now.
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._run())
        return super().subscribe()

    async def settle(self, timeout: float = 5.0) -> bool:
        """Wait until what was published so far went through Redis and back into the fan-out."""
        await self.start()
        self.drain()
        deadline = time.monotonic() + timeout
        if not await self._until(lambda: self.connected, deadline):
            self.fanout.flush()
            return False
        self._outbox_ready.set()
        if not await self._until(lambda: not self._outbox and not self._writing, deadline):
            return False
        try:
            assert self._client is not None
            newest = await within(self._client.xrevrange(self.key, count=1), self.timeout)
        except UNAVAILABLE:
            return False
        if latest := _entries(newest):
            target = _id_key(latest[0][0])
            if not await self._until(lambda: _id_key(self._last_id) >= target, deadline):
                return False
        self.fanout.flush()
        return True

    async def _until(self, predicate: Callable[[], bool], deadline: float) -> bool:
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await within(self._changed.wait(), min(left, 0.1))
        return True

    async def close(self) -> None:
        self._closed = True
        self._outbox_ready.set()  # a write loop waiting for events wakes and sees the hub closed
        self.drain()
        if self.connected:
            with contextlib.suppress(Exception):
                await within(self._flush_outbox(), self.timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await super().close()

    # ---- the link ----

    async def _run(self) -> None:
        """Connect, load the stream's history, follow it; on any failure, degrade and retry with back-off."""
        while not self._closed:
            self._client = client(self.url, self.timeout)
            self._reader = client(self.url, READ_BLOCK_MS / 1000 + self.timeout)
            tasks: list[asyncio.Task[None]] = []
            try:
                await within(self._client.ping(), self.timeout)
                await self._load_history()
                self._set_connected(True)
                self._backoff.connected()  # reset only once the link stays up a while
                tasks = [asyncio.ensure_future(self._read_loop()), asyncio.ensure_future(self._write_loop())]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # the failure that ended the link
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                self._set_connected(False, describe(exc))
            except Exception as exc:  # a reply this code did not expect: degrade the same way
                if self._link_log.due() is not None:
                    log.exception("cluster feed failed")
                self._set_connected(False, type(exc).__name__)
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                for connection in (self._client, self._reader):
                    with contextlib.suppress(Exception):
                        await connection.aclose()
            await asyncio.sleep(self._backoff.next())

    def _set_connected(self, connected: bool, reason: str = "") -> None:
        if connected == self.connected:
            if not connected and self._down_since is None:  # not reachable from the start
                self._down_since = time.monotonic()
                log.warning(
                    "cluster feed unavailable (Redis at %s: %s): consoles show this worker's requests "
                    "until it answers", where(self.url), reason,
                )
            return
        self.connected = connected
        if connected:
            if self._down_since is not None and self._lost_logged:
                down = time.monotonic() - self._down_since
                log.info("cluster feed back (Redis at %s) after %.1fs", where(self.url), down)
            self._down_since = None
        else:
            self._down_since = time.monotonic()
            left_out = self._link_log.due()
            self._lost_logged = left_out is not None
            if left_out is not None:
                log.warning(
                    "cluster feed lost (Redis at %s: %s): consoles show this worker's requests until it is "
                    "back%s", where(self.url), reason,
                    f" (lost {left_out} more times since the last such line)" if left_out else "",
                )
            # What was waiting for Redis is this worker's: show it here at least.
            while self._outbox:
                self.fanout.publish(self._outbox.popleft())
        self._changed.set()
        self.broadcast({
            "type": "cluster", "id": "-", "t": time.time(), "worker": self.worker,
            "state": "connected" if connected else "disconnected", "reason": reason or None,
        })

    async def _load_history(self) -> None:
        """Fold the stream's entries into a fresh replay buffer; follow the stream from its end."""
        assert self._client is not None
        entries = _entries(await within(
            self._client.xrange(self.key, count=MAX_STREAM_ENTRIES), self.timeout * 5
        ))
        events: list[dict[str, Any]] = []
        self._first_entry.clear()
        for entry_id, fields in entries:
            for event in self._decode(entry_id, fields):
                events.append(event)
        self._last_id = entries[-1][0] if entries else b"0-0"
        self.fanout.rebuild(events, "cluster")

    def _decode(self, entry_id: bytes, fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
        """The events of one stream entry, or none: its size checked before it is decoded, each event's
        shape after (anyone who can write to Redis can write this stream)."""
        raw = fields.get(FIELD, b"[]") if isinstance(fields, dict) else None
        if not isinstance(raw, bytes):
            self.unreadable += 1
            return []
        if len(raw) > self.max_entry_bytes:
            self.oversize += 1
            left_out = self._oversize_log.due()
            if left_out is not None:
                log.warning(
                    "console: dropped a cluster stream entry of %d bytes undecoded (more than %d); "
                    "%d dropped in all", len(raw), self.max_entry_bytes, self.oversize,
                )
            return []
        try:
            events = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.unreadable += 1
            return []
        if not isinstance(events, list):
            self.unreadable += 1
            return []
        out = []
        for event in events:
            checked = _checked_event(event)
            if checked is None:
                self.unreadable += 1
                continue
            if role_of(checked["type"]) == "request" and checked["id"] not in self._first_entry:
                self._first_entry[checked["id"]] = entry_id
                while len(self._first_entry) > 4 * self.buffer_size:
                    self._first_entry.popitem(last=False)
            out.append(checked)
        return out

    async def _read_loop(self) -> None:
        assert self._reader is not None
        while not self._closed:
            reply = await within(
                self._reader.xread({self.key: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS),
                READ_BLOCK_MS / 1000 + 2 * self.timeout,
            )
            for entry_id, fields in _read_entries(reply):
                for event in self._decode(entry_id, fields):
                    self.fanout.publish(event)
                self._last_id = entry_id
            self._changed.set()
            await self._trim()

    async def _trim(self) -> None:
        """Keep the stream to the requests the console buffer holds: drop entries before the oldest one's first."""
        oldest = self.fanout.log.oldest()
        if oldest is None:
            return
        first = self._first_entry.get(oldest)
        if first is None or first == self._trimmed_to:
            return
        assert self._client is not None
        await within(self._client.xtrim(self.key, minid=first, approximate=True), self.timeout)
        self._trimmed_to = first

    async def _write_loop(self) -> None:
        """One XADD per batch window with everything the outbox holds, in publication order."""
        while not self._closed:
            await self._outbox_ready.wait()
            await asyncio.sleep(self.policy.batch_interval)
            self._outbox_ready.clear()
            await self._flush_outbox()
            self._changed.set()

    async def _flush_outbox(self) -> None:
        assert self._client is not None
        while self._outbox:
            batch = coalesce([self._outbox.popleft() for _ in range(min(len(self._outbox), 2000))])
            self._writing = True
            try:
                for value in entries_of(batch, self.max_entry_bytes):
                    await within(
                        self._client.xadd(self.key, {FIELD: value}, maxlen=MAX_STREAM_ENTRIES, approximate=True),
                        self.timeout,
                    )
            except BaseException:
                # Not sent: this worker shows it locally (the link is degraded from here on).
                for event in batch:
                    self.fanout.publish(event)
                raise
            finally:
                self._writing = False


def _checked_event(event: Any) -> dict[str, Any] | None:
    """An event read from Redis if it has this hub's shape: a request's event of a known type with a
    short string id (station and feed pushes never travel through the stream); a request's fields are
    bounded again, like the chat path's own."""
    if not isinstance(event, dict):
        return None
    rid, kind = event.get("id"), event.get("type")
    role = role_of(kind)
    if not isinstance(rid, str) or not rid or len(rid) > MAX_ID_CHARS or role is None or role in PUSHES:
        return None
    if role == "request":
        event = sanitize(event)
        if not isinstance(event.get("worker"), str) or len(event["worker"]) > MAX_ID_CHARS:
            event["worker"] = "?"
    return event


def entries_of(events: list[dict[str, Any]], most: int) -> list[bytes]:
    """`events` as stream entry values of at most `most` bytes each, in order (a batch too long is
    split; an event too long alone, which the chat path's bounds make unlikely, is left out)."""
    value = encode_batch(events)
    if len(value) <= most:
        return [value]
    if len(events) == 1:
        event = events[0]
        text = event.get("text")
        if role_of(event.get("type")) == "text" and isinstance(text, str) and len(text) > 1:
            # A long run of tokens, joined: sent as two halves of the run.
            half = len(text) // 2
            first, second = {**event, "text": text[:half]}, {**event, "text": text[half:]}
            return entries_of([first], most) + entries_of([second], most)
        log.warning("console: an event of %d bytes was not sent to the cluster (more than %d)", len(value), most)
        return []
    middle = len(events) // 2
    return entries_of(events[:middle], most) + entries_of(events[middle:], most)


def encode_batch(events: list[dict[str, Any]]) -> bytes:
    """A batch of events as one stream entry's value."""
    try:
        return orjson.dumps(events, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return encode({"events": events}).encode()  # falls back per frame; decoded as not-a-list, skipped
