"""Workers: the server with 1 and with 2 worker processes, side by side with the relay, in one run;
then how often a 3-worker cluster polls the ISS sources in one minute, with and without Redis.

    python -m bench.workers            # about 5 minutes; writes bench/results/workers.{json,md}

Throughput is content chunks per second at c=200 through each path (closed loop, keep-alive, the
fake upstream sending as fast as it can). Added TTFT p99 is each server's p99 time to the first
content chunk minus the relay's, at c=200 with a paced upstream. Pacing is the token-gap deviation
(|gap out − gap in|, bench.loadgen) at c=50 with the OpenAI-like profile (bench.profiles): where
one process runs out of CPU. Paths are interleaved round by round so the machine's drift hits each
alike. Everything runs on loopback: the load generator,
the fake upstream, the relay and the servers share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import procs
from bench.loadgen import chat_body, run_batch
from bench.profiles import PROFILES
from bench.stats import minus, ms, percentile, ratio

ROOT = Path(__file__).resolve().parent.parent
CHAT_PATH = "/v1/chat/completions"
OUT = ROOT / "bench" / "results"


async def throughput_and_ttft(kids: procs.Children, args: argparse.Namespace) -> dict[str, Any]:
    upstream = kids.start("upstream", procs.fake_upstream_argv(20, 0.0, 0.0))
    relay = kids.start("relay", procs.relay_argv(upstream.url))
    urls = {"relay": relay.url + CHAT_PATH}
    for workers in (1, 2):
        port = procs.free_port()
        env = procs.server_env(upstream.url, kids.log_dir / f"cache-{workers}", CONSOLE_ENABLED="true",
                               LOG_LEVEL="warning", UPSTREAM_TIMEOUT="60")
        kids.start(f"server-{workers}w", [*procs.server_argv(port), "--workers", str(workers)], env=env, port=port)
        urls[f"server {workers} worker{'s' if workers > 1 else ''}"] = f"http://127.0.0.1:{port}{CHAT_PATH}"
    paths = list(urls)
    c = args.concurrency
    tp_body = chat_body(args.tokens, 0.0, 0.0)
    lat_body = chat_body(20, args.gap, 0.0)
    paced_body = PROFILES["openai"].body()
    for path in paths:  # warm-up: every worker started, connections and code paths warm
        await run_batch(urls[path], tp_body, 20, 200, time_budget=30)
    procs_of = {"relay": [relay.process()]}
    for child in kids.children:
        if child.name.startswith("server-"):
            tree = child.process()
            procs_of[f"server {child.name[7]} worker{'s' if child.name[7] != '1' else ''}"] = [tree, *tree.children()]
    me, up = psutil.Process(), upstream.process()
    cpu = {p: {"layer": 0.0, "upstream": 0.0, "loadgen": 0.0} for p in paths}
    chunks = {p: 0 for p in paths}
    walls = {p: 0.0 for p in paths}
    ttfts: dict[str, list[float]] = {p: [] for p in paths}
    failed = {p: 0 for p in paths}
    pacing: dict[str, list[float]] = {p: [] for p in paths}
    paced_ttfc: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(args.rounds):
        order = paths[r % len(paths):] + paths[:r % len(paths)]
        for path in order:
            print(f"round {r + 1}/{args.rounds}: {path} throughput", file=sys.stderr, flush=True)
            before = [sum(procs.cpu_seconds(p) for p in procs_of[path]), procs.cpu_seconds(up), procs.cpu_seconds(me)]
            batch = await run_batch(urls[path], tp_body, c, args.requests, time_budget=60, request_timeout=60)
            after = [sum(procs.cpu_seconds(p) for p in procs_of[path]), procs.cpu_seconds(up), procs.cpu_seconds(me)]
            for key, b, a in zip(("layer", "upstream", "loadgen"), before, after, strict=True):
                cpu[path][key] += a - b
            chunks[path] += sum(s.chunks for s in batch.ok)
            walls[path] += batch.wall
            failed[path] += batch.failed
        for path in order:
            print(f"round {r + 1}/{args.rounds}: {path} latency", file=sys.stderr, flush=True)
            batch = await run_batch(urls[path], lat_body, c, 3 * c, time_budget=60, request_timeout=60)
            ttfts[path] += [s.ttft for s in batch.ok if s.ttft is not None]
            failed[path] += batch.failed
        for path in order:
            print(f"round {r + 1}/{args.rounds}: {path} pacing", file=sys.stderr, flush=True)
            pc = args.paced_concurrency
            batch = await run_batch(urls[path], paced_body, pc, 3 * pc, time_budget=60, request_timeout=60,
                                    stamped=True)
            for sample in batch.ok:
                pacing[path] += sample.pacing
                if sample.ttfc is not None:
                    paced_ttfc[path].append(sample.ttfc)
            failed[path] += batch.failed
    rows = {}
    relay_p99 = percentile(ttfts["relay"], 99)
    for path in paths:
        rows[path] = {
            "chunks_per_s": round(chunks[path] / walls[path]) if walls[path] else None,
            **latency_row(ttfts[path], None if path == "relay" else relay_p99),
            "paced_ttfc_p50_ms": ms(percentile(paced_ttfc[path], 50)),
            "pacing_p50_ms": ms(percentile(pacing[path], 50)),
            "pacing_p95_ms": ms(percentile(pacing[path], 95)),
            "failed": failed[path],
            # Cores busy during the throughput batches: the layer (all its processes), the fake
            # upstream, the load generator. Their sum near 2 means the machine itself was the limit.
            "cores": {k: round(v / walls[path], 2) for k, v in cpu[path].items()} if walls[path] else None,
        }
    for path in paths:
        rows[path]["of_relay"] = ratio(rows[path]["chunks_per_s"], rows["relay"]["chunks_per_s"])
    for child in list(kids.children):
        kids.stop(child)
    return rows


def latency_row(ttfts: list[float], relay_p99: float | None) -> dict[str, float | None]:
    """TTFT p50 and p99 in ms (percentiles on the 0-100 scale) and the p99 added to the relay's."""
    p99 = percentile(ttfts, 99)
    return {
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p99_ms": ms(p99),
        "added_ttft_p99_ms": None if relay_p99 is None else ms(minus(p99, relay_p99)),
    }


async def cluster_polls(kids: procs.Children, seconds: float, with_redis: bool) -> dict[str, int]:
    """ISS source requests a 3-worker cluster makes in `seconds` (fakes counting on loopback)."""
    from tests.fakes.iss_sources import FakeIssSources
    from tests.redis_server import RedisServer

    fakes = FakeIssSources()
    await fakes.start()
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-"))) if with_redis else None
    if redis is not None:
        redis.start()
    port = procs.free_port()
    env = {
        "LLM_BACKEND": "builtin", "ISS_SOURCES": "open-notify,wheretheiss,tle",
        "ISS_API_URL": fakes.url("open-notify"), "WHERETHEISS_URL": fakes.url("wheretheiss"),
        "TLE_URL": fakes.url("celestrak"), "ISS_CACHE_DIR": str(kids.log_dir / f"polls-cache-{with_redis}"),
        "LOG_LEVEL": "warning", "REDIS_URL": redis.url if redis else "",
    }
    name = f"cluster-{'redis' if with_redis else 'alone'}"
    child = kids.start(name, [*procs.server_argv(port), "--workers", "3"], env=env, port=port)
    try:
        await asyncio.sleep(seconds)
        counts = {source: fakes.requests[source] for source in ("open-notify", "wheretheiss", "celestrak")}
    finally:
        kids.stop(child)
        if redis is not None:
            redis.stop()
        await fakes.close()
    return counts


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Workers: {result['started']} on {result['machine']['cpus']} cores ({result['machine']['python']})",
        "",
        f"`{result['command']}`: c={result['concurrency']}, {result['rounds']} interleaved rounds.",
        "",
        "| path | chunks/s at c=200 | of the relay | TTFT p50 | TTFT p99 | added TTFT p99 vs relay | "
        f"first content p50, openai profile, c={result.get('paced_concurrency')} | pacing p50 · p95 | failed "
        "| cores busy: layer · upstream · load generator |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path, row in result["paths"].items():
        lines.append(
            f"| {path} | {row['chunks_per_s']:,} | {row['of_relay']:.2f} | {row['ttft_p50_ms']:.1f} ms | "
            f"{row['ttft_p99_ms']:.1f} ms | "
            f"{'–' if row['added_ttft_p99_ms'] is None else format(row['added_ttft_p99_ms'], '.1f') + ' ms'} | "
            f"{row['paced_ttfc_p50_ms']:.1f} ms | {row['pacing_p50_ms']:.2f} · {row['pacing_p95_ms']:.2f} ms | "
            f"{row['failed']} | {row['cores']['layer']} · {row['cores']['upstream']} · {row['cores']['loadgen']} |"
        )
    lines += ["", f"ISS source requests of a 3-worker cluster in {result['poll_seconds']:.0f} s:", "",
              "| cluster | open-notify | wheretheiss | celestrak |", "| --- | --- | --- | --- |"]
    for name, counts in result["polls"].items():
        lines.append(f"| {name} | {counts['open-notify']} | {counts['wheretheiss']} | {counts['celestrak']} |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    with procs.Children() as kids, procs.stop_on_signals(kids):
        procs.raise_nofile()
        paths = await throughput_and_ttft(kids, args)
        polls = {}
        if args.poll_seconds > 0:
            polls["3 workers with Redis (one lease)"] = await cluster_polls(kids, args.poll_seconds, True)
            polls["3 workers without Redis"] = await cluster_polls(kids, args.poll_seconds, False)
    return {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.workers " + " ".join(sys.argv[1:]),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "concurrency": args.concurrency, "rounds": args.rounds, "requests": args.requests,
        "paced_concurrency": args.paced_concurrency,
        "paths": paths, "poll_seconds": args.poll_seconds, "polls": polls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="throughput requests per batch")
    parser.add_argument("--tokens", type=int, default=50, help="content chunks per throughput request")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between chunks in latency batches")
    parser.add_argument("--paced-concurrency", type=int, default=50, help="agents in the pacing batches")
    parser.add_argument("--poll-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (args.out / "workers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
