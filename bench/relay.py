"""The floor: a byte-for-byte aiohttp relay that forwards the upstream's bytes unparsed.

It does what any relay must (read the request, open the upstream stream, copy each block of bytes
to the caller as it arrives, stop the upstream when the caller leaves) and nothing else, so its
figures are the lowest a Python layer on this machine can reach.

Run alone: python -m bench.relay --port 9300 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from bench.procs import relay_main

_FORWARDED = ("Content-Type", "Authorization")
_SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_relay(upstream: str) -> web.Application:
    """An aiohttp app relaying every POST to `upstream` + the same path."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    upstream = upstream.rstrip("/")

    async def open_session(app: web.Application) -> None:
        app[_SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_read=60)
        )

    async def close_session(app: web.Application) -> None:
        await app[_SESSION].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
        async with app[_SESSION].post(upstream + request.path, data=body, headers=headers) as answer:
            response = web.StreamResponse(status=answer.status)
            response.content_type = answer.content_type
            await response.prepare(request)
            async for block in answer.content.iter_any():
                await response.write(block)
            await response.write_eof()
            return response

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_post("/{path:.*}", relay)
    return app


async def serve(port: int, upstream: str) -> None:
    """Listen on loopback until cancelled; prints the URL once listening."""
    # handler_cancellation: a caller that leaves cancels the handler, which closes the upstream.
    runner = web.AppRunner(make_relay(upstream), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"relay on http://127.0.0.1:{bound} -> {upstream}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    relay_main(serve, "byte-for-byte relay (the benchmark's floor)", 9300)
