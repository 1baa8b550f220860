"""What the layer's own tools cost a caller: the extra upstream round trip, and each tool's own time.

Run: .venv/bin/python -m bench.tools [--requests 20] [--upstream-delay 0.3] [--runs 30]

Loopback only: the upstream is tests/fakes/openai_upstream.py (its `scripted_tools` mode calls
iss_passes for "When can I see the ISS from Paris?", then answers with the result), the ISS sources
are tests/fakes/iss_sources.py. `--upstream-delay` is the fake upstream's time to its first chunk,
standing in for a real model's (each round pays it once). Side by side in one run, interleaved: the
same question with ISS_TOOLS on (two rounds) and off (one round), time to the first content token
on a fresh connection each time; then each tool alone, in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import make_app, make_server  # noqa: E402
from config import Settings  # noqa: E402
from services.iss.queries import IssQueries  # noqa: E402
from services.iss.tools import IssTools  # noqa: E402
from services.iss.tracker import IssTracker  # noqa: E402
from tests.fakes.iss_sources import FakeIssSources, tracker_settings  # noqa: E402
from tests.fakes.openai_upstream import FakeUpstream  # noqa: E402

QUESTION = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": "When can I see the ISS from Paris?"}]}


async def _first_content_ms(url: str) -> float:
    """Milliseconds from sending the request to the first content token on the wire."""
    first: list[float] = []
    buffer = bytearray()
    started = time.perf_counter()

    def on_chunk(data: bytes) -> None:
        if first:
            return
        buffer.extend(data)
        *events, rest = bytes(buffer).split(b"\n\n")
        buffer[:] = rest
        for event in events:
            if not event.startswith(b"data: {"):
                continue
            chunk = orjson.loads(event[6:])
            if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ()):
                first.append(time.perf_counter())
                return

    request = HTTPRequest(url, method="POST", body=orjson.dumps(QUESTION), streaming_callback=on_chunk,
                          headers={"Content-Type": "application/json"}, request_timeout=30)
    await AsyncHTTPClient().fetch(request)
    return ((first[0] if first else time.perf_counter()) - started) * 1000


async def _server(settings: Settings) -> tuple[object, object, str]:
    app = make_app(settings)
    server = make_server(app, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    server.add_socket(sock)
    port = sock.getsockname()[1]
    return app, server, f"http://127.0.0.1:{port}/v1/chat/completions"


async def chat_figures(requests: int, delay: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        async with FakeIssSources() as fakes:
            upstream = FakeUpstream(first_token_delay=delay, scripted_tools=True)
            await upstream.start()
            base = fakes.settings(Settings(llm_backend="openai", openai_base_url=upstream.base_url,
                                           openai_api_key="sk-bench", iss_sources=("open-notify",),
                                           iss_cache_dir=Path(cache), console_token="bench-console-token-0"))
            on_app, on_server, on_url = await _server(base)
            off_app, off_server, off_url = await _server(base.with_overrides(iss_tools=False))
            try:
                await _first_content_ms(on_url)
                await _first_content_ms(off_url)
                on, off = [], []
                for _ in range(requests):
                    on.append(await _first_content_ms(on_url))
                    off.append(await _first_content_ms(off_url))
            finally:
                for server, app in ((on_server, on_app), (off_server, off_app)):
                    server.stop()
                    await app.services.close()
                await upstream.close()
    return {"on": statistics.median(on), "off": statistics.median(off)}


async def tool_figures(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        async with FakeIssSources() as fakes:
            tracker = IssTracker(tracker_settings(fakes, Path(cache), iss_sources=("open-notify",)))
            try:
                await tracker.current()
                tools = IssTools(IssQueries(tracker))
                out = {}
                for name, arguments in (("iss_position", "{}"), ("iss_crew", "{}"),
                                        ("iss_passes", '{"place": "Paris", "days": 5}')):
                    times = []
                    for index in range(runs):
                        # A different place each time for passes: no cached answer.
                        args = arguments if name != "iss_passes" else orjson.dumps(
                            {"latitude": 48.0 + index * 0.01, "longitude": 2.35, "days": 5}).decode()
                        result = await tools.run(name, args)
                        times.append(result.ms)
                    out[name] = statistics.median(times)
                return out
            finally:
                await tracker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--upstream-delay", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    chat = asyncio.run(chat_figures(args.requests, args.upstream_delay))
    tools = asyncio.run(tool_figures(args.runs))
    print("| figure (median) | ms |\n|---|---:|")
    delay = f"{args.upstream_delay:g} s"
    print(f"| first content token, tools off (one round, upstream delay {delay}) | {chat['off']:.1f} |")
    print(f"| first content token, tools on, iss_passes called (two rounds) | {chat['on']:.1f} |")
    print(f"| extra for the tool round | {chat['on'] - chat['off']:.1f} |")
    for name, ms in tools.items():
        print(f"| {name} alone | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
