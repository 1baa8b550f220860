"""The framework's floor: a bare Tornado relay with one shared aiohttp client, forwarding bytes unparsed.

The server is Tornado in front of an aiohttp upstream client. This is the least those two cost
together: a Tornado handler that posts the caller's body to the upstream over one shared
`aiohttp.ClientSession`, writes each block of the answer to the caller as it arrives (TCP_NODELAY on),
and closes the upstream stream when the caller leaves. No parsing, validation, ISS block, console,
metrics or limits. Against bench/relay.py (aiohttp alone) in the same run it shows what Tornado
itself adds; against the server, what the server's own work adds.

Run alone: python -m bench.tornado_relay --port 9400 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import asyncio

import aiohttp
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

from bench.procs import relay_main

_FORWARDED = ("Content-Type", "Authorization")


class TornadoRelay(tornado.web.RequestHandler):
    def initialize(self, session: aiohttp.ClientSession, upstream: str) -> None:
        self.session = session
        self.upstream = upstream
        self.relaying: asyncio.Task[None] | None = None

    async def post(self) -> None:
        self.relaying = asyncio.ensure_future(self._relay())
        try:
            await self.relaying
        except (asyncio.CancelledError, StreamClosedError):
            pass  # the caller left: the upstream stream is closed, nothing more to write

    async def _relay(self) -> None:
        headers = {name: self.request.headers[name] for name in _FORWARDED if name in self.request.headers}
        async with self.session.post(self.upstream + self.request.path, data=self.request.body,
                                     headers=headers) as answer:
            self.set_status(answer.status)
            self.set_header("Content-Type", answer.headers.get("Content-Type", "text/event-stream"))
            stream = self.request.connection.stream  # type: ignore[union-attr]  # HTTP1Connection has one
            stream.set_nodelay(True)
            async for block in answer.content.iter_any():
                self.write(block)
                await self.flush()

    def on_connection_close(self) -> None:
        # As any relay must: a caller that leaves closes the upstream stream at once.
        super().on_connection_close()
        if self.relaying is not None:
            self.relaying.cancel()


def make_tornado_relay(upstream: str, session: aiohttp.ClientSession) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/.*", TornadoRelay, {"session": session, "upstream": upstream.rstrip("/")})]
    )


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_read=60)
    )


async def serve(port: int, upstream: str) -> None:
    """Listen on loopback until cancelled; prints the URL once listening."""
    session = new_session()
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096)
    server = HTTPServer(make_tornado_relay(upstream, session))
    server.add_sockets(sockets)
    print(f"tornado relay on http://127.0.0.1:{sockets[0].getsockname()[1]} -> {upstream}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
        await session.close()


if __name__ == "__main__":
    relay_main(serve, "bare Tornado + aiohttp client relay (the framework's floor)", 9400)
