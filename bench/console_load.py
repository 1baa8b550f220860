"""Console load: how many events/s one console socket keeps up with, and chat TTFT with 10 consoles vs none.

Run: .venv/bin/python bench/console_load.py [--requests 400] [--concurrency 10] [--consoles 10]
                                            [--upstream builtin|fake] [--skip-rates]

The server (built-in responder, no network) and the event publisher run in this process; the
console sockets and the chat load run in child processes (modes `consoles` and `chat`), so a
reader never shares the server's event loop. Both clients parse every frame, as a page would.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "bench-console-token"
END_ID = "bench-end"
TURN = ROOT / "tests" / "data" / "fixtures" / "tavus" / "request_turn.json"


# ---- child: console sockets ------------------------------------------------------------------


async def run_consoles(url: str, count: int) -> dict[str, Any]:
    """Open `count` console sockets, read and parse everything until the end marker on each."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/console?token={TOKEN}", allow_redirects=False) as response:
            cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        ws_url = url.replace("http://", "ws://") + "/console/ws"

        async def one() -> dict[str, Any]:
            stats = {"frames": 0, "events": 0, "distinct": 0, "token_chars": 0, "snapshots": 0, "dropped": 0,
                     "end_at": None}
            async with session.ws_connect(ws_url, headers={"Cookie": cookie}, max_msg_size=0) as ws:
                async for message in ws:
                    frame = orjson.loads(message.data)
                    stats["frames"] += 1
                    if frame["type"] == "snapshot":
                        stats["snapshots"] += 1
                        stats["dropped"] += frame.get("dropped", 0)
                    for event in frame.get("events", ()):
                        stats["events"] += 1
                        if event["type"] == "tokens":
                            stats["token_chars"] += len(event["text"])
                        elif event["id"] == END_ID:
                            stats["end_at"] = time.time()
                            return stats
                        elif event["type"] == "done":
                            stats["distinct"] += 1
            return stats

        results = await asyncio.gather(*(one() for _ in range(count)))
    return {"sockets": results}


# ---- child: chat load ------------------------------------------------------------------------


async def run_chat(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    """Closed-loop streamed chat requests; each one's time to first data event, in ms."""
    body = TURN.read_bytes()
    ttfts: list[float] = []
    issued = 0

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal issued
        while issued < requests:
            issued += 1
            started = time.perf_counter()
            first = None
            headers = {"Content-Type": "application/json", "conversation-id": f"bench-{n}"}
            async with session.post(f"{url}/v1/chat/completions", data=body, headers=headers) as response:
                async for block in response.content.iter_any():
                    if first is None and b"data: " in block:
                        first = time.perf_counter() - started
                assert response.status == 200, response.status
            ttfts.append(first * 1000)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
    return {"ttft_ms": ttfts}


# ---- parent: the server, the publisher and the two measurements ------------------------------


async def child(mode: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, mode, *args, stdout=asyncio.subprocess.PIPE
    )


async def result(process: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    return orjson.loads(out.strip().splitlines()[-1])


async def finish(reader: asyncio.subprocess.Process, hub: Any) -> dict[str, Any]:
    """Publish the end marker until every socket has seen it (one may be lost to a resync)."""
    outcome = asyncio.ensure_future(result(reader, 60))
    deadline = time.monotonic() + 15
    while not outcome.done() and time.monotonic() < deadline:
        hub.publish({"type": "done", "id": END_ID, "t": time.time()})
        await asyncio.wait({outcome}, timeout=0.5)
    if not outcome.done():
        reader.kill()
        outcome.cancel()
        return {"sockets": [{"end_at": None, "events": 0, "distinct": 0, "token_chars": 0, "frames": 0,
                             "snapshots": 1, "dropped": None}]}
    return outcome.result()


async def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


async def publish_at(hub: Any, rate: int, seconds: float, mix: str) -> tuple[int, int]:
    """Publish synthetic events at `rate`/s for `seconds`; returns (events, token characters)."""
    tick = 0.005
    per_tick = max(1, round(rate * tick))
    events = chars = 0
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < seconds:
        for _ in range(per_tick):
            n += 1
            if mix == "distinct":
                # Nothing coalesces: every event is its own request's "done".
                hub.publish({"type": "done", "id": f"d{n}", "t": time.time(), "finish_reason": "stop"})
            else:
                # A chat-like stream: 20 requests in flight, one token (one character) each turn.
                rid = f"r{n % 20}"
                hub.publish({"type": "tokens", "id": rid, "t": time.time(), "text": "x"})
                chars += 1
            events += 1
        target = started + (n / per_tick) * tick
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
    return events, chars


async def keeps_up(url: str, hub: Any, rate: int, mix: str, seconds: float = 3.0) -> dict[str, Any]:
    """Whether one socket receives every event at `rate`, within a second of the publisher."""
    reader = await child("consoles", url, "1")
    await wait_for(lambda: hub.subscribers == 1, 10)
    events, chars = await publish_at(hub, rate, seconds, mix)
    ended = time.time()
    stats = (await finish(reader, hub))["sockets"][0]
    lag = (stats["end_at"] or float("inf")) - ended
    received = stats["token_chars"] if mix == "tokens" else stats["distinct"]
    wanted = chars if mix == "tokens" else events
    ok = stats["snapshots"] == 0 and received == wanted and lag < 1.0
    return {"rate": rate, "published_per_s": round(events / seconds), "ok": ok, "lag_s": round(lag, 3),
            "frames": stats["frames"], "dropped": stats["dropped"]}


async def ttft_phase(
    url: str, hub: Any, consoles: int, requests: int, concurrency: int
) -> tuple[list[float], float]:
    """Chat TTFTs (ms) with `consoles` sockets open, and this server's CPU time per request (ms)."""
    readers = None
    if consoles:
        readers = await child("consoles", url, str(consoles))
        await wait_for(lambda: hub.subscribers == consoles, 10)
    cpu = time.process_time()
    load = await result(await child("chat", url, str(requests), str(concurrency)), 300)
    cpu_ms = (time.process_time() - cpu) * 1000 / requests
    if readers is not None:
        await finish(readers, hub)
    return load["ttft_ms"], cpu_ms


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(ordered):6.2f} ms  p95 {p95:6.2f} ms  (n={len(ordered)})"


async def main(args: argparse.Namespace) -> None:
    from app import make_app, make_server
    from config import Settings

    fake = None
    backend: dict[str, Any] = {"llm_backend": "builtin"}
    if args.upstream == "fake":
        # A paced fake LLM in its own process: chat streams at a realistic speed, not flat out.
        fake = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(args.fake_port),
            "--tokens", "40", "--gap", "0.01", "--first-token-delay", "0.05",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.wait_for(fake.stdout.readline(), 10)  # type: ignore[union-attr]
        backend = {"llm_backend": "openai", "openai_api_key": "sk-bench-upstream",
                   "openai_base_url": f"http://127.0.0.1:{args.fake_port}/v1"}
    settings = Settings(
        **backend, iss_sources=("tle",), console_token=TOKEN, port=0, log_level="warning",
        iss_cache_dir=Path("/tmp/iss-llm-bench-cache"), tle_url="http://127.0.0.1:9/offline",
    )
    app = make_app(settings)
    server = make_server(app, settings)
    [sock] = __import__("tornado.netutil", fromlist=["bind_sockets"]).bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    hub = app.services.hub  # type: ignore[attr-defined]

    print("One console socket: highest publish rate with every event delivered, no resync, lag < 1 s")
    for mix in () if args.skip_rates else ("distinct", "tokens"):
        best = None
        for rate in args.rates:
            outcome = await keeps_up(url, hub, rate, mix)
            print(f"  {mix:8s} {rate:>8d}/s -> {outcome}")
            if not outcome["ok"]:
                break
            best = outcome["published_per_s"]
        print(f"  => {mix}: keeps up with {best} events/s")

    print(f"Chat TTFT, {args.requests} requests x {args.concurrency} concurrent per phase, phases interleaved")
    runs: dict[int, list[float]] = {0: [], args.consoles: []}
    cpu: dict[int, list[float]] = {0: [], args.consoles: []}
    for consoles in (0, args.consoles, 0, args.consoles):
        ttfts, cpu_ms = await ttft_phase(url, hub, consoles, args.requests // 2, args.concurrency)
        runs[consoles] += ttfts
        cpu[consoles].append(cpu_ms)
    for consoles, values in runs.items():
        per_request = statistics.mean(cpu[consoles])
        print(f"  {consoles:2d} consoles: {summary(values)}  server CPU {per_request:.2f} ms/request")
    server.stop()
    await app.services.close()  # type: ignore[attr-defined]
    if fake is not None:
        fake.terminate()
        await fake.wait()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode")
    sub.add_parser("consoles").add_argument("rest", nargs="*")
    sub.add_parser("chat").add_argument("rest", nargs="*")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--consoles", type=int, default=10)
    parser.add_argument("--upstream", choices=("builtin", "fake"), default="builtin",
                        help="builtin: the offline responder, flat out; fake: a paced fake LLM process")
    parser.add_argument("--fake-port", type=int, default=9177)
    parser.add_argument("--skip-rates", action="store_true", help="only measure TTFT")
    parser.add_argument(
        "--rates", type=lambda s: [int(x) for x in s.split(",")],
        default=[1000, 5000, 20000, 50000, 100000, 200000, 400000, 800000],
    )
    args = parser.parse_args()
    if args.mode == "consoles":
        url, count = args.rest
        print(orjson.dumps(asyncio.run(run_consoles(url, int(count)))).decode())
    elif args.mode == "chat":
        url, requests, concurrency = args.rest
        print(orjson.dumps(asyncio.run(run_chat(url, int(requests), int(concurrency)))).decode())
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
