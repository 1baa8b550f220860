"""Server-Sent Events on a Tornado handler: start, send now, coalesce, keepalive, and TCP_NODELAY."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from services.common.futures import retrieve_outcome
from services.common.openai_format import KEEPALIVE_EVENT


class CallerGone(Exception):
    """The caller closed the connection; nothing more can be written."""


class SseWriter:
    """Writes one streamed answer: each event either leaves now (`send`) or with the next flush of
    whatever else is already here (`write_soon`); a comment keeps the line alive when nothing was
    sent for `keepalive_interval` seconds."""

    def __init__(
        self, handler: tornado.web.RequestHandler, keepalive_interval: float,
        on_keepalive: Callable[[], None] | None = None,
    ) -> None:
        self._handler: tornado.web.RequestHandler | None = handler  # None once released
        self._interval = keepalive_interval
        self._on_keepalive = on_keepalive  # counts them (metrics)
        self.started = False
        self._flush_soon = False
        self._flushing: asyncio.Future[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_sent = 0.0

    def start(self) -> None:
        """Headers for an event stream, and TCP_NODELAY on its socket.

        Tornado turns TCP_NODELAY on only inside finish(): on a stream still open, Nagle's
        algorithm holds every small write until the caller acknowledges the one before, and a
        caller on a keep-alive connection delays that acknowledgement by up to 40 ms.
        """
        if self.started:
            return
        self.started = True
        handler = self._live
        handler.set_status(200)
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")
        connection = handler.request.connection
        if isinstance(connection, HTTP1Connection) and not connection.stream.closed():
            connection.stream.set_nodelay(True)

    @property
    def _live(self) -> tornado.web.RequestHandler:
        """The handler to write to; CallerGone once the answer was released."""
        if self._handler is None:
            raise CallerGone
        return self._handler

    def release(self) -> None:
        """The answer is finished (the handler's on_finish calls this): let go of the handler, so
        nothing more is written and no cycle is left for the collector."""
        self.stop_keepalive()
        self._handler = None

    async def send(self, data: bytes) -> None:
        """Write and flush now (with whatever write_soon buffered); raises CallerGone when the caller left."""
        await self.flushed()
        self.start()
        handler = self._live
        handler.write(data)
        self._flush_soon = False  # this flush also sends whatever write_soon buffered
        self._last_sent = asyncio.get_running_loop().time()
        try:
            await handler.flush()
        except StreamClosedError:
            raise CallerGone from None

    def write_soon(self, data: bytes) -> None:
        """Buffer an event and flush once this task waits: events that arrived together leave in one write."""
        self.start()
        self._live.write(data)
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        if not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(self._flush_buffered)

    def _flush_buffered(self) -> None:
        # The owner calls release() from its on_finish(): no handler here means the answer is finished.
        if self._flush_soon and self._handler is not None:
            self._flush_soon = False
            self._flushing = self._handler.flush()
            # A closed stream is noticed by on_connection_close; this only keeps the failure quiet.
            self._flushing.add_done_callback(retrieve_outcome)

    async def flushed(self) -> None:
        """Wait until the last buffered flush reached the socket: a slow caller slows the relay."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            try:
                await flushing
            except StreamClosedError:
                raise CallerGone from None

    def start_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._keepalive = loop.call_later(self._interval, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        """Whenever nothing was sent for the interval (before the first token, or a model that pauses
        to think), a comment keeps proxies and callers with read timeouts on the line."""
        if self._handler is None:  # released: the answer is finished
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_sent
        if idle >= self._interval * 0.99:
            self.write_soon(KEEPALIVE_EVENT)
            if self._on_keepalive is not None:
                self._on_keepalive()
            idle = 0.0
        self._keepalive = loop.call_later(self._interval - idle, self._keepalive_tick)

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
