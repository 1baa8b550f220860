"""handlers/sse.py against a real Tornado server and a real socket: a caller gone is CallerGone,
whichever write notices it first."""

from __future__ import annotations

import asyncio
import socket

import tornado.httpserver
import tornado.web
from tornado.testing import bind_unused_port

from handlers.sse import CallerGone, SseWriter


class _Probe(tornado.web.RequestHandler):
    """Sends one event; once the caller has closed the connection, buffers another (its flush runs
    on the closed stream, before the handler hears of the close) and waits for that flush."""

    def initialize(self, results: list[str]) -> None:
        self.results = results

    async def get(self) -> None:
        sse = SseWriter(self, 60.0)
        await sse.send(b"data: first\n\n")
        stream = self.request.connection.stream  # type: ignore[union-attr]
        for _ in range(1000):  # polled, at most 10 s
            if stream.closed():
                break
            await asyncio.sleep(0.01)
        else:
            self.results.append("the server never saw the caller leave")
            return
        sse.write_soon(b"data: second\n\n")
        await asyncio.sleep(0)  # the buffered flush runs now, on the closed stream
        try:
            await sse.flushed()
            self.results.append("flushed without error")
        except CallerGone:
            self.results.append("CallerGone")
        except Exception as exc:  # what the chat handler would turn into a 500 "inside this server"
            self.results.append(type(exc).__name__)


async def test_a_flush_that_fails_on_a_closed_stream_is_caller_gone(io_loop):
    results: list[str] = []
    sock, port = bind_unused_port()
    server = tornado.httpserver.HTTPServer(tornado.web.Application([("/", _Probe, {"results": results})]))
    server.add_sockets([sock])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        seen = b""
        while b"data: first" not in seen:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, seen
            seen += chunk
        raw = writer.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # a reset
        writer.close()
        for _ in range(1500):  # polled, at most 15 s
            if results:
                break
            await asyncio.sleep(0.01)
        assert results == ["CallerGone"]
    finally:
        server.stop()
