"""What a flood of pass searches does to chat: first-token p95 without and with 200 abandoned /iss/passes.

    python -m bench.flood            # 6 rounds (about a minute on 2 cores)
    python -m bench.flood --quick    # 2 rounds

One fake upstream and one server (its own processes, default settings but ISS_RATE_PER_MIN=0: the
flood is as if it came from 200 addresses, so the pass-search queue, not the rate limit, is what
sheds it). Each round measures three windows in an order that rotates round by round:
  off  `--callers` chat callers, back to back on kept-alive connections, for `--window` seconds;
  floor the same, while `--flood` GET /iss/crew are sent at once and abandoned: what that many
       requests cost the event loop whatever they ask (HTTP parsing, a handler, an answer, a log line);
  on   the same, while `--flood` GET /iss/passes requests (10 days each, every one a different
       place, new places every round, so no cache helps) are sent at once and abandoned: each
       connection closes as soon as its request is written.
The figure is the time to the first content token of every chat request started in a window,
pooled per kind over the rounds: added p95 = on − off (issue 19's target: at most 20 ms).
Loopback only. Writes bench/results/flood.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.loadgen import Sample, chat_body, make_session, stream_once
from bench.stats import percentile

RESULTS = Path(__file__).resolve().parent / "results"
CHAT_PATH = "/v1/chat/completions"
TARGET_MS = 20.0
# off: chat alone; floor: chat and 200 GET /iss/crew (the cheapest /iss route: what 200 requests cost
# the event loop whatever they ask); on: chat and 200 GET /iss/passes.
KINDS = ("off", "floor", "on")


@dataclass
class Config:
    rounds: int = 6
    flood: int = 200
    callers: int = 4
    window: float = 2.0  # seconds of chat requests started, from the flood's first request
    settle: float = 1.0  # pause after each window (the server finishes what the flood left it)
    days: float = 10.0
    tokens: int = 20
    gap: float = 0.002
    first_token_delay: float = 0.02
    server_env: tuple[tuple[str, str], ...] = ()  # more settings for the server (--set NAME=VALUE)


def flood_path(number: int, round_number: int, days: float) -> str:
    """A pass search for a place of its own: distinct per request and per round once rounded to 0.1°."""
    lat = -60.0 + (number % 100) * 1.2 + 0.1 * (round_number % 10)
    lon = -170.0 + (number // 100 % 3) * 100.0 + 0.1 * (round_number % 10)
    return f"/iss/passes?lat={lat:.1f}&lon={lon:.1f}&days={days:g}"


async def flood(port: int, count: int, round_number: int, days: float, cheap: bool = False) -> int:
    """`count` /iss/passes requests (`cheap`: /iss/crew) on as many connections at once, each closed
    once written; how many went."""

    async def one(number: int) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        path = "/iss/crew" if cheap else flood_path(number, round_number, days)
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   "Connection: close\r\n\r\n")
        writer.write(request.encode())
        try:
            await writer.drain()
        except OSError:
            return False
        finally:
            writer.close()
        return True

    sent = await asyncio.gather(*(one(number) for number in range(count)))
    return sum(sent)


class Flooder:
    """The flood from a process of its own (`python -m bench.flood --send PORT`), so that opening 200
    connections does not slow the bench's own chat callers: told to go on stdin, it answers with the
    number of requests it wrote once all are written."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, port: int) -> Flooder:
        process = await asyncio.create_subprocess_exec(
            procs.PYTHON, "-m", "bench.flood", "--send", str(port), cwd=procs.ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        flooder = cls(process)
        assert await flooder._line() == "ready"
        return flooder

    async def _line(self) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the flooder exited")
        return line.decode().strip()

    async def send(self, count: int, round_number: int, days: float, cheap: bool) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{count} {round_number} {days} {int(cheap)}\n".encode())
        await self.process.stdin.drain()
        return int(await self._line())

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def serve_floods(port: int) -> None:
    """The flooder's side: one flood per line read on stdin ("count round days cheap"), until EOF."""
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        count, round_number, days, cheap = line.split()
        sent = await flood(port, int(count), int(round_number), float(days), cheap == "1")
        print(sent, flush=True)


async def chat_window(session: aiohttp.ClientSession, url: str, body: bytes, callers: int,
                      window: float) -> list[Sample]:
    """`callers` callers sending chat requests back to back (on the session's kept-alive connections,
    as agents hold them); the requests started within `window` seconds."""
    samples: list[Sample] = []
    deadline = time.monotonic() + window

    async def caller() -> None:
        while time.monotonic() < deadline:
            samples.append(await stream_once(session, url, body, 30.0))

    await asyncio.gather(*(caller() for _ in range(callers)))
    return samples


async def run(cfg: Config, kids: procs.Children) -> dict[str, Any]:
    upstream = kids.start("upstream", procs.fake_upstream_argv(cfg.tokens, cfg.gap, cfg.first_token_delay))
    port = procs.free_port()
    env = procs.server_env(upstream.url, kids.log_dir / "cache", ISS_RATE_PER_MIN="0", **dict(cfg.server_env))
    server = kids.start("server", procs.server_argv(port), env=env, port=port)
    url = server.url + CHAT_PATH
    body = chat_body(cfg.tokens, cfg.gap, cfg.first_token_delay)
    kinds: dict[str, dict[str, Any]] = {kind: {"ttfc": [], "failed": 0, "cpu_s": 0.0, "requests": 0}
                                        for kind in KINDS}
    flooder = await Flooder.start(server.port)
    try:
        async with make_session(cfg.callers) as session:
            sent_total = await _rounds(cfg, session, server, flooder, url, body, kinds)
    finally:
        await flooder.close()
    return {"kinds": kinds, "flood_sent": sent_total}


async def _rounds(cfg: Config, session: aiohttp.ClientSession, server: procs.Child, flooder: Flooder, url: str,
                  body: bytes, kinds: dict[str, dict[str, Any]]) -> int:
    await chat_window(session, url, body, cfg.callers, 0.5)  # warm-up: connections, first imports
    await flooder.send(5, 99, cfg.days, False)
    await asyncio.sleep(cfg.settle)
    sent_total = 0
    for round_number in range(cfg.rounds):
        order = KINDS[round_number % 3:] + KINDS[:round_number % 3]
        for kind in order:
            before = procs.cpu_seconds(server.process())
            if kind != "off":
                flooding = asyncio.ensure_future(flooder.send(cfg.flood, round_number, cfg.days, kind == "floor"))
                samples = await chat_window(session, url, body, cfg.callers, cfg.window)
                sent = await flooding
                sent_total += sent if kind == "on" else 0
            else:
                samples = await chat_window(session, url, body, cfg.callers, cfg.window)
            await asyncio.sleep(cfg.settle)
            figures = kinds[kind]
            figures["cpu_s"] += procs.cpu_seconds(server.process()) - before
            figures["requests"] += len(samples)
            figures["failed"] += sum(1 for sample in samples if not sample.ok or sample.ttfc is None)
            figures["ttfc"] += [sample.ttfc for sample in samples if sample.ok and sample.ttfc is not None]
            p95 = percentile(figures["ttfc"], 95)
            print(f"  round {round_number + 1}/{cfg.rounds} {kind:3} chat requests {len(samples)}"
                  f"  first-token p95 so far {1000 * (p95 or 0):.1f} ms", file=sys.stderr, flush=True)
        if not server.alive():
            raise RuntimeError(f"the server died:\n{server.log_tail()}")
    return sent_total


def summarize(cfg: Config, measured: dict[str, Any], started: datetime) -> dict[str, Any]:
    rows = {}
    for kind, figures in measured["kinds"].items():
        ttfc = figures["ttfc"]
        rows[kind] = {
            "requests": figures["requests"], "failed": figures["failed"],
            "ttfc_p50_ms": 1000 * (percentile(ttfc, 50) or 0), "ttfc_p95_ms": 1000 * (percentile(ttfc, 95) or 0),
            "ttfc_p99_ms": 1000 * (percentile(ttfc, 99) or 0), "server_cpu_s": figures["cpu_s"],
        }
    added = rows["on"]["ttfc_p95_ms"] - rows["off"]["ttfc_p95_ms"]
    beyond_floor = rows["on"]["ttfc_p95_ms"] - rows["floor"]["ttfc_p95_ms"]
    return {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": round((datetime.now(UTC) - started).total_seconds()),
        "config": asdict(cfg), "rows": rows, "flood_sent": measured["flood_sent"],
        "added_p95_ms": added, "searches_added_p95_ms": beyond_floor, "target_ms": TARGET_MS,
        "met": added <= TARGET_MS and all(row["requests"] > row["failed"] == 0 for row in rows.values()),
    }


def markdown(result: dict[str, Any]) -> str:
    cfg, rows = result["config"], result["rows"]
    lines = [
        f"Chat first token without and with a pass-search flood, one run (`{result.get('command', '')}`, started"
        f" {result['started']}, {result['elapsed_s']} s; {cfg['rounds']} rounds of {cfg['window']:g} s windows,"
        f" {cfg['callers']} chat callers back to back; flood: {cfg['flood']} GET /iss/passes of {cfg['days']:g} days,"
        f" distinct places, sent at once and abandoned; {result['flood_sent']} sent in all)",
        "",
        "| flood | chat requests | failed | first token p50 | p95 | p99 | server CPU in the windows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, row in rows.items():
        lines.append(f"| {kind} | {row['requests']} | {row['failed']} | {row['ttfc_p50_ms']:.1f} ms |"
                     f" {row['ttfc_p95_ms']:.1f} ms | {row['ttfc_p99_ms']:.1f} ms | {row['server_cpu_s']:.2f} s |")
    verdict = "met" if result["met"] else "NOT met"
    lines += ["", f"Added first-token p95 (on − off): {result['added_p95_ms']:+.1f} ms; target at most"
                  f" {result['target_ms']:g} ms: {verdict}. Of which beyond 200 requests of the cheapest /iss"
                  f" route (on − floor), what the pass searches themselves add:"
                  f" {result['searches_added_p95_ms']:+.1f} ms."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--flood", type=int, help="requests per flood (200)")
    parser.add_argument("--callers", type=int)
    parser.add_argument("--window", type=float)
    parser.add_argument("--settle", type=float)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a server setting")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--send", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the flooder process
    args = parser.parse_args(argv)
    if args.send:
        procs.raise_nofile(4096)
        asyncio.run(serve_floods(args.send))
        return 0
    cfg = Config(server_env=tuple(tuple(item.split("=", 1)) for item in args.set))  # type: ignore[misc]
    if args.quick:
        cfg.rounds = 2
    for name in ("rounds", "flood", "callers", "window", "settle"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    procs.raise_nofile(4 * cfg.flood + 1024)
    started = datetime.now(UTC)
    with procs.Children() as kids, procs.stop_on_signals(kids):
        try:
            measured = asyncio.run(run(cfg, kids))
        except KeyboardInterrupt:
            return 130
        except RuntimeError as exc:
            print(f"benchmark failed: {exc}\nlogs: {kids.log_dir}", file=sys.stderr)
            return 1
    result = summarize(cfg, measured, started)
    result["command"] = " ".join(["python -m bench.flood", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flood.md").write_text(text + "\n")
    (args.out / "flood.json").write_text(json.dumps(result, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
