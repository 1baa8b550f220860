"""The agreed stack alone: Tornado and the openai package relaying an upstream's stream, nothing else.

The project is built on Tornado and streams through the official openai package. This is the least
those two cost together: a Tornado handler that passes the caller's body to the upstream through
`AsyncOpenAI` (with the aiohttp transport the server uses, as the package documents it, and without
the SDK's telemetry headers, as the server sends it), writes each block of the answer to the caller
as it arrives, with TCP_NODELAY on, and closes the upstream stream when the caller leaves. No
parsing, validation, ISS block, console, metrics or limits; one write per block read (the server
holds events back only once the first content token is out). Against bench/relay.py (aiohttp alone) in the
same run it shows what the stack itself adds; against the server, what the server's own work adds.

Run alone: python -m bench.stack --port 9400 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import asyncio

import httpx2
import openai
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

from bench.procs import relay_main

# The two telemetry headers the SDK adds per request, left out as the server leaves them out.
_PER_REQUEST_TELEMETRY_OFF = {"x-stainless-retry-count": openai.Omit(), "x-stainless-read-timeout": openai.Omit()}


class StackRelay(tornado.web.RequestHandler):
    def initialize(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self.relaying: asyncio.Task[None] | None = None

    async def post(self) -> None:
        self.relaying = asyncio.ensure_future(self._relay())
        try:
            await self.relaying
        except (asyncio.CancelledError, StreamClosedError):
            pass  # the caller left: the upstream stream is closed, nothing more to write

    async def _relay(self) -> None:
        answer = await self.client.post(
            "/chat/completions", cast_to=httpx2.Response, content=self.request.body,
            options={"security": {"bearer_auth": True}, "headers": _PER_REQUEST_TELEMETRY_OFF}, stream=True,
        )
        try:
            self.set_status(answer.status_code)
            self.set_header("Content-Type", answer.headers.get("Content-Type", "text/event-stream"))
            self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]
            async for block in answer.aiter_raw():
                self.write(block)
                await self.flush()
        finally:
            await answer.aclose()

    def on_connection_close(self) -> None:
        # As any relay must: a caller that leaves closes the upstream stream at once.
        super().on_connection_close()
        if self.relaying is not None:
            self.relaying.cancel()


def make_stack(upstream: str) -> tuple[tornado.web.Application, openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        api_key="sk-bench-not-a-real-key", base_url=upstream.rstrip("/") + "/v1",
        http_client=openai.DefaultAioHttpClient(), max_retries=0,
    )
    # The SDK's x-stainless-* telemetry headers left out, as the server does.
    telemetry = [name for name in client.default_headers if name.lower().startswith("x-stainless-")]
    client = client.with_options(default_headers={name: openai.Omit() for name in telemetry})
    return tornado.web.Application([(r"/v1/chat/completions", StackRelay, {"client": client})]), client


async def serve(port: int, upstream: str) -> None:
    """Listen on loopback until cancelled; prints the URL once listening."""
    app, client = make_stack(upstream)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    print(f"stack on http://127.0.0.1:{sockets[0].getsockname()[1]} -> {upstream}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
        await client.close()


if __name__ == "__main__":
    relay_main(serve, "Tornado + openai package relay (the agreed stack's floor)", 9400)
