"""One ISS poller per cluster: a lease in Redis elects it; it publishes each fix and element set, the others use them.

The lease is a key set with NX and a short expiry, renewed by its holder (a compare-and-extend
script); the others try to take it each renewal period, so it moves within a few seconds of its
holder's death. A worker that begins to drain resigns: it gives the lease up at once (a
compare-and-delete, so never another's) and never takes or renews it again, so a live worker polls
within a renewal period. A holder stops polling when a renewal finds the lease taken, or when the
lease it last renewed runs out with no renewal answered (a slow or frozen Redis). While this worker
cannot reach Redis there is no lease to be had: it polls on its own, at its own pace. CelesTrak's
rule holds for the whole cluster: each attempt is recorded in Redis (10 minutes, the retry after a
failure), each success for the full refresh interval, and no worker asks while the record stands.

What comes back from Redis is data anyone with access to it may have written: a message or the
stored element set longer than MAX_MESSAGE_BYTES is dropped undecoded, and a fix or element set is
used only once services.iss.cluster_data has checked it (at most one fix a second is looked at).
Dropped ones are counted and logged at most once a minute; so are the link's failures, and its
back-off grows across connect-then-fail cycles (Redis at maxmemory refusing the lease's writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as redis

from services.common.futures import within
from services.iss.cluster_data import (
    MAX_MESSAGE_BYTES,
    Untrusted,
    checked_elements,
    checked_fix,
    encode_elements,
    encode_fix,
)
from services.iss.sources import Fix
from services.iss.tle import Elements
from services.ops.redis_link import UNAVAILABLE, Backoff, LogEvery, client, describe, where

log = logging.getLogger("iss_llm.iss")

LEASE_TTL_S = 3.0
RENEW_S = 1.0
FAILED_ATTEMPT_HOLD_S = 600.0
MAX_OUTGOING = 32

# Extend the lease only if it is still ours.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Give the lease up only if it is still ours.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


# Fixes from the cluster looked at, at most one per this many seconds (the poller sends one every few).
MIN_FIX_GAP_S = 1.0
MAX_LEADER_CHARS = 128


def _leader_name(raw: bytes | str | None) -> str | None:
    """The lease holder as /healthz shows it: printable, bounded (the key's value is Redis's)."""
    if not raw:
        return None
    if isinstance(raw, bytes):
        raw = raw[: 4 * MAX_LEADER_CHARS].decode("utf-8", "replace")
    text = raw.rsplit(":", 1)[0]
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_LEADER_CHARS])


class RedisIssFeed:
    """This worker's part in the cluster's single ISS poller."""

    def __init__(
        self,
        url: str,
        worker: str,
        tle_interval: float,
        *,
        prefix: str = "iss_llm:iss",
        timeout: float = 1.0,
        lease_ttl: float = LEASE_TTL_S,
    ) -> None:
        self.url = url
        self.worker = worker
        self.tle_interval = tle_interval
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self.renew_every = min(RENEW_S, lease_ttl / 3)
        self.lease_key = f"{prefix}:lease"
        self.channel = f"{prefix}:updates"
        self.elements_key = f"{prefix}:elements"
        self.attempt_key = f"{prefix}:celestrak-attempt"
        self.connected = False
        self.holder = False
        # The lease is surely this worker's until then (time.monotonic()): when its last take or
        # renewal was sent, plus the TTL. Past it, with no renewal answered, another may hold it.
        self._lease_until = 0.0
        self.leader: str | None = None  # who holds the lease, as last seen
        self._me = f"{worker}:{secrets.token_hex(4)}"
        self._on_fix: Callable[[Fix], None] = lambda fix: None
        self._on_elements: Callable[[Elements], Any] = lambda elements: None
        self._elements: Callable[[], Elements | None] = lambda: None
        self.refused = 0  # fixes, element sets and messages from Redis that were not used
        self.last_refused: str | None = None  # why the last one was not (this code's words, no data of it)
        self._refused_log = LogEvery()
        self._link_log = LogEvery()
        self._last_fix_checked = 0.0
        self._celestrak_blocked_until = 0.0
        self._outgoing: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(MAX_OUTGOING)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._resigned = False  # draining or closed: never take or renew the lease again
        self._lease_lock = asyncio.Lock()  # one lease command at a time: none in flight past resign()
        self._commands: redis.Redis | None = None  # the link the lease loop uses, while connected
        self._backoff = Backoff()
        self._warned = False
        self._first_round = asyncio.Event()  # set once the lease was tried (or Redis failed)

    def attach(
        self, on_fix: Callable[[Fix], None], on_elements: Callable[[Elements], Any],
        elements: Callable[[], Elements | None] = lambda: None,
    ) -> None:
        """Where the fixes and element sets other workers fetched go (the tracker), and the element set
        in use, which a fix from the cluster must agree with."""
        self._on_fix = on_fix
        self._on_elements = on_elements
        self._elements = elements

    # ---- what the tracker asks (synchronous, from what the background loop last saw) ----

    def _holds(self) -> bool:
        """This worker holds the lease, as far as it can be sure: a renewal that does not come back
        (a slow or frozen Redis) stops it polling when the lease it last had runs out, not when a
        command's timeout ends the link."""
        return self.holder and time.monotonic() < self._lease_until

    def may_poll(self) -> bool:
        return not self._resigned and (self._holds() or not self.connected)

    def may_fetch_elements(self) -> bool:
        if self._resigned:
            return False
        if not self.connected:
            return True
        if not self._holds() or time.time() < self._celestrak_blocked_until:
            return False
        # Recorded for the cluster at once: a failure means no one asks for 10 minutes.
        self._celestrak_blocked_until = time.time() + FAILED_ATTEMPT_HOLD_S
        self._send("attempt", {"hold_s": FAILED_ATTEMPT_HOLD_S})
        return True

    def fetched_fix(self, fix: Fix) -> None:
        if self._holds() and self.connected:
            self._send("fix", encode_fix(fix))

    def fetched_elements(self, elements: Elements) -> None:
        if self.connected:
            self._celestrak_blocked_until = time.time() + self.tle_interval
            self._send("elements", encode_elements(elements))

    def _send(self, kind: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # Redis is behind: the next fix will do
            self._outgoing.put_nowait((kind, data))

    # ---- life ----

    async def start(self) -> None:
        """Join the cluster; returns once this worker knows whether it holds the lease (or that Redis
        cannot be reached), so the tracker's first poll follows the lease, bounded by a few timeouts."""
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._run())
            with contextlib.suppress(TimeoutError):
                await within(self._first_round.wait(), 3 * self.timeout)

    async def resign(self) -> None:
        """This worker is draining: give the lease up now (only if it is still ours) and never take or
        renew it again; fixes from the new holder still arrive. Returns once no lease command of this
        worker is in flight (each is bounded by the timeout)."""
        self._resigned = True
        async with self._lease_lock:
            commands = self._commands
            self.holder = False
            if commands is None:
                return  # not connected: whatever Redis holds for this worker expires on its own
            # Even when this worker does not think it holds the lease: a take whose answer was lost
            # (timed out) may have set it. The script deletes it only while it is still ours.
            try:
                released = await within(
                    commands.eval(_RELEASE, 1, self.lease_key, self._me), self.timeout)
            except UNAVAILABLE as exc:
                log.info("ISS: could not give up the polling lease (%s); it expires on its own", describe(exc))
                return
            if released:
                log.info("ISS: this worker gave up the polling lease (shutting down)")

    async def close(self) -> None:
        self._closed = True
        await self.resign()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.holder = False

    def health(self) -> dict[str, Any]:
        return {"connected": self.connected, "polls": self.may_poll(), "lease_holder": self.leader}

    async def _run(self) -> None:
        while not self._closed:
            commands = client(self.url, self.timeout)
            listener = client(self.url, self.timeout)
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            tasks: list[asyncio.Task[None]] = []
            try:
                await within(commands.ping(), self.timeout)
                await within(pubsub.subscribe(self.channel), self.timeout)
                await self._load_elements(commands)
                self.connected = True
                self._commands = commands
                self._backoff.connected()  # the delay resets only once the link stays up a while
                if self._warned:
                    log.info("ISS: cluster link back (Redis at %s): polling by lease again", where(self.url))
                    self._warned = False
                tasks = [asyncio.ensure_future(body) for body in
                         (self._lease_loop(commands), self._listen(pubsub), self._publish_loop(commands))]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            except UNAVAILABLE as exc:
                self._first_round.set()
                # Once per outage, and at most once a minute for a link that keeps failing as it connects.
                if not self._warned and (left_out := self._link_log.due()) is not None:
                    log.warning("ISS: no cluster lease (Redis at %s: %s): this worker polls on its own%s",
                                where(self.url), describe(exc),
                                f" (failed {left_out} more times since the last such line)" if left_out else "")
                    self._warned = True
            finally:
                self.connected = False
                self._commands = None
                self.holder = False
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                for connection in (pubsub, commands, listener):
                    with contextlib.suppress(Exception):
                        await connection.aclose()
            await asyncio.sleep(self._backoff.next())

    async def _load_elements(self, commands: redis.Redis) -> None:
        # Its length first: a stored value too long is never read whole.
        size = await within(commands.strlen(self.elements_key), self.timeout)
        if not size:
            return
        if size > MAX_MESSAGE_BYTES:
            self._refuse("the stored element set", f"{size} bytes")
            return
        raw = await within(commands.get(self.elements_key), self.timeout)
        if raw:
            self._take_raw("elements", raw, "the stored element set")

    async def _lease_loop(self, commands: redis.Redis) -> None:
        ttl_ms = int(self.lease_ttl * 1000)
        while True:
            async with self._lease_lock:
                await self._hold_lease(commands, ttl_ms)
            leader = await within(commands.getrange(self.lease_key, 0, 4 * MAX_LEADER_CHARS), self.timeout)
            self.leader = _leader_name(leader)
            left_ms = await within(commands.pttl(self.attempt_key), self.timeout)
            if left_ms and left_ms > 0:
                self._celestrak_blocked_until = max(self._celestrak_blocked_until, time.time() + left_ms / 1000)
            self._first_round.set()
            await asyncio.sleep(self.renew_every)

    async def _hold_lease(self, commands: redis.Redis, ttl_ms: int) -> None:
        """Renew the lease if ours, else try to take it; nothing once this worker has resigned."""
        if self._resigned:
            return
        if self.holder:
            sent = time.monotonic()
            kept = await within(
                commands.eval(_RENEW, 1, self.lease_key, self._me, ttl_ms), self.timeout)
            if kept:
                self._lease_until = sent + self.lease_ttl
            else:
                self.holder = False
                log.warning("ISS: lost the polling lease")
        if not self.holder:
            sent = time.monotonic()
            taken = await within(commands.set(self.lease_key, self._me, nx=True, px=ttl_ms), self.timeout)
            if taken:
                self._lease_until = sent + self.lease_ttl
                self.holder = True
                log.info("ISS: this worker polls the ISS sources for the cluster")

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            self._take_raw(None, message.get("data"), "a cluster update")

    def _take_raw(self, kind: str | None, raw: Any, what: str) -> None:
        """One value read from Redis: its size checked before it is decoded, its shape and content after.
        `kind` None: an update on the channel (an envelope naming its kind and sender)."""
        if not isinstance(raw, bytes) or len(raw) > MAX_MESSAGE_BYTES:
            self._refuse(what, f"{len(raw)} bytes" if isinstance(raw, bytes) else "not bytes")
            return
        try:
            data = orjson.loads(raw)
            if kind is None:
                if not isinstance(data, dict):
                    raise Untrusted("an update that is not an object")
                if data.get("from") == self._me:
                    return
                kind, data = data.get("kind"), data.get("data")
            self._take(kind, data)
        except orjson.JSONDecodeError:
            self._refuse(what, "not JSON")
        except Untrusted as exc:
            self._refuse(what, str(exc))
        except Exception:  # the tracker refused it: one bad update must not end the link
            log.exception("ISS: a cluster update could not be used")

    def _take(self, kind: Any, data: Any) -> None:
        if kind == "fix":
            now = time.monotonic()
            if now - self._last_fix_checked < MIN_FIX_GAP_S:
                raise Untrusted("a fix too soon after the last one")
            self._last_fix_checked = now
            self._on_fix(checked_fix(data, self._elements()))
        elif kind == "elements":
            self._on_elements(checked_elements(data))
        else:
            raise Untrusted("an update of an unknown kind")

    def _refuse(self, what: str, why: str) -> None:
        """Something read from Redis was not used: counted, and logged at most once a minute."""
        self.refused += 1
        self.last_refused = f"{what}: {why}"
        left_out = self._refused_log.due()
        if left_out is not None:
            log.warning("ISS: ignoring %s from Redis (%s); %d ignored in all", what, why, self.refused)

    async def _publish_loop(self, commands: redis.Redis) -> None:
        while True:
            kind, data = await self._outgoing.get()
            if kind == "attempt":
                await within(
                    commands.set(self.attempt_key, self.worker, px=int(data["hold_s"] * 1000)), self.timeout)
                continue
            envelope = orjson.dumps({"from": self._me, "kind": kind, "data": data})
            if kind == "elements":
                await within(commands.set(self.elements_key, orjson.dumps(data)), self.timeout)
                await within(
                    commands.set(self.attempt_key, self.worker, px=int(self.tle_interval * 1000)), self.timeout)
            await within(commands.publish(self.channel, envelope), self.timeout)
