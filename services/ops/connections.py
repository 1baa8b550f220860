"""How many connections one process holds: a cap, idle ones shed first, accept() errors without a storm.

Without this, a client that opens more idle connections than the open-file limit allows makes
accept() fail with EMFILE on every turn of the loop: the listening socket stays readable, the
process spins, every attempt logs a traceback, and /healthz and chat stop answering.

`CappedHTTPServer` counts open connections and, at `max_connections`, first closes the
connection that has been idle longest (waiting for a request's headers: a keep-alive between
turns, or one that never sent anything), so a newcomer always gets in while any connection is
idle; only when every connection is busy with a request is the newcomer refused, at once, with a
503. accept() errors (out of descriptors, or anything else) pause accepting briefly instead of
spinning, and are logged once per interval with a count.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from services.common.errors import ApiError

log = logging.getLogger("iss_llm.connections")

# Descriptors kept free for what is not a caller's connection: the upstream client's pool, the ISS
# sources, log and cache files, the console's sockets count as callers.
FD_RESERVE = 128
# Each caller's connection may hold an upstream connection too.
FDS_PER_CONNECTION = 2
# accept() failed: stop accepting for this long rather than retrying on every turn of the loop.
ACCEPT_PAUSE = 0.1
LOG_INTERVAL = 10.0
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# New connections taken per turn of the loop. Each one's first request runs in the next turn, ahead of
# the token writes that became ready meanwhile: 128 (Tornado's figure) let a burst of 200 connections
# hold a concurrent chat's tokens for ~100 ms (flood bench, /iss/crew: p99 111 ms against 33 ms without);
# at 8 the burst is spread over turns (p99 55 ms), and new-connection chat latency did not move (bench.run).
_ACCEPTS_PER_TURN = 8

_REFUSAL_BODY = orjson.dumps(ApiError(
    503, "This server has too many open connections; try again shortly.",
    type="server_error", code="too_many_connections",
).body())
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


def caller_left(connection: httputil.HTTPConnection | None) -> bool:
    """Whether the caller already closed this request's connection (its end of file waits on the socket).

    One non-blocking peek, a few microseconds: side routes check it before any work, so a request sent
    and abandoned at once (a flood) costs its parsing and nothing more. A caller that half-closes after
    its request is treated as gone, as Tornado itself treats an end of file.
    """
    if not isinstance(connection, HTTP1Connection):
        return False
    stream = connection.stream
    if stream.closed():
        return True
    try:
        return stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # nothing to read: still there
    except OSError:
        return True  # reset


def raise_open_file_limit(ceiling: int = 1 << 20) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (at most `ceiling`); returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft, hard


def fitting_cap(wanted: int, open_file_limit: int) -> int:
    """`wanted`, lowered to what the open-file limit holds (but never under 16)."""
    return min(wanted, max(16, (open_file_limit - FD_RESERVE) // FDS_PER_CONNECTION))


@dataclass
class ConnectionStats:
    """What /healthz shows about connections; counters only grow."""

    max: int = 0
    open: int = 0
    accepted: int = 0
    refused: int = 0  # every connection was busy: answered 503 and closed
    idle_closed: int = 0  # closed to make room for a newcomer
    accept_errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"open": self.open, "max": self.max, "accepted": self.accepted, "refused": self.refused,
                "idle_closed": self.idle_closed, "accept_errors": self.accept_errors}


class _Summary:
    """Counts events and logs one line per interval (the first at once), never one per event."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last = -interval
        self._counts: dict[str, int] = {}

    def note(self, what: str) -> None:
        self._counts[what] = self._counts.get(what, 0) + 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            parts = ", ".join(f"{count} x {name}" for name, count in sorted(self._counts.items()))
            self._counts = {}
            log.warning("connections under pressure (%s; next summary in %.0f s at the earliest)", parts,
                        self.interval)


class _Watch(httputil.HTTPMessageDelegate):
    """Passes a request through, marking its connection busy once the request's headers are in."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, server: CappedHTTPServer,
                 conn: HTTP1ServerConnection) -> None:
        self.inner = inner
        self.server = server
        self.conn = conn

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        self.server._idle.pop(self.conn, None)
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


class CappedHTTPServer(HTTPServer):
    """Tornado's HTTPServer with a cap on open connections and an accept loop that cannot spin."""

    def initialize(self, *args: Any, max_connections: int = 1000, stats: ConnectionStats | None = None,
                   **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        if self.ssl_options is not None:
            raise ValueError("CappedHTTPServer serves plain HTTP: TLS ends at the reverse proxy")
        self.stats = stats or ConnectionStats()
        self.stats.max = max_connections
        # Connections waiting for a request's headers, the longest-waiting first.
        self._idle: OrderedDict[HTTP1ServerConnection, None] = OrderedDict()
        self._shed: set[object] = set()  # closed to make room, not yet reported closed
        self._summary = _Summary()
        self._listening: dict[socket.socket, Callable[[], None]] = {}  # each socket, and what stops its accepting

    # --- counting ------------------------------------------------------------------------------

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        self.stats.accepted += 1
        self.stats.open += 1
        super().handle_stream(stream, address)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        # Called when the connection starts waiting for its next request: it is idle until headers arrive.
        delegate = super().start_request(server_conn, request_conn)
        if not isinstance(server_conn, HTTP1ServerConnection):  # what HTTPServer.handle_stream makes
            return delegate
        self._idle[server_conn] = None
        self._idle.move_to_end(server_conn)
        return _Watch(delegate, self, server_conn)

    def on_close(self, server_conn: object) -> None:
        self.stats.open -= 1
        if isinstance(server_conn, HTTP1ServerConnection):
            self._idle.pop(server_conn, None)
        self._shed.discard(server_conn)
        super().on_close(server_conn)

    def _make_room(self) -> bool:
        """Close the longest-idle connection; False when every connection is busy."""
        while self._idle:
            conn, _ = self._idle.popitem(last=False)
            if conn in self._shed:
                continue
            self._shed.add(conn)
            self.stats.idle_closed += 1
            self._summary.note("idle connection closed to make room")
            conn.stream.close()  # frees its descriptor now
            return True
        return False

    @property
    def _holding(self) -> int:
        return self.stats.open - len(self._shed)

    # --- accepting -----------------------------------------------------------------------------

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        # Tornado's own add_sockets accepts through netutil.add_accept_handler, which spins on an
        # accept() error; this server runs its own accept loop and makes each stream as TCPServer does.
        for sock in sockets:
            self._listening[sock] = self._accept_on(sock, self._connected)

    def stop(self) -> None:
        """Stop accepting (the sockets are closed); requests in progress go on."""
        for sock, stop_accepting in self._listening.items():
            stop_accepting()
            sock.close()
        self._listening.clear()
        super().stop()

    def _connected(self, connection: socket.socket, address: Any) -> None:
        stream = IOStream(connection, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
        self.handle_stream(stream, address)

    def _admit(self, connection: socket.socket) -> bool:
        if self._holding < self.stats.max or self._make_room():
            return True
        self.stats.refused += 1
        self._summary.note(f"refused at the cap of {self.stats.max} (every connection busy)")
        _refuse(connection)
        return False

    def _accept_on(self, sock: socket.socket, callback: Callable[[socket.socket, Any], None]) -> Callable[[], None]:
        """Like tornado.netutil.add_accept_handler, but an accept() error pauses instead of spinning."""
        io_loop = IOLoop.current()
        removed = False
        paused: object | None = None  # the timeout that resumes accepting, while paused

        def resume() -> None:
            nonlocal paused
            paused = None
            if not removed:
                io_loop.add_handler(sock, ready, IOLoop.READ)

        def pause() -> None:
            nonlocal paused
            io_loop.remove_handler(sock)
            paused = io_loop.call_later(ACCEPT_PAUSE, resume)

        def ready(fd: Any, events: int) -> None:
            for _ in range(_ACCEPTS_PER_TURN):
                if removed:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    self.stats.accept_errors += 1
                    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
                    self._summary.note(f"accept() failed: {reason}")
                    if exc.errno in _OUT_OF_DESCRIPTORS and self._make_room():
                        continue  # an idle connection's descriptor is free again: try once more
                    pause()
                    return
                if self._admit(connection):
                    callback(connection, address)

        def remove() -> None:
            nonlocal removed
            removed = True
            if paused is not None:
                io_loop.remove_timeout(paused)
            else:
                io_loop.remove_handler(sock)

        io_loop.add_handler(sock, ready, IOLoop.READ)
        return remove


def _refuse(connection: socket.socket) -> None:
    """A 503 if the socket takes it at once, then closed: never a wait on a refused caller."""
    try:
        connection.setblocking(False)
        connection.send(REFUSAL)
    except OSError:
        pass
    finally:
        connection.close()
