"""What metrics, JSON logs and traces cost the chat path: the same server with them off and on, in one run.

    python -m bench.metrics_cost             # 4 rounds (about 5 minutes on 2 cores)
    python -m bench.metrics_cost --quick     # 2 rounds, fewer requests (about 1 minute)
    python -m bench.metrics_cost --tracing   # a fourth server: metrics and OpenTelemetry traces on

Three servers against one fake upstream, all with the console on and LOG_LEVEL=info:
  off           METRICS_ENABLED=false, LOG_FORMAT=text (the cost floor)
  metrics       METRICS_ENABLED=true,  LOG_FORMAT=text
  metrics+json  METRICS_ENABLED=true,  LOG_FORMAT=json
  metrics+traces (--tracing) METRICS_ENABLED=true, LOG_FORMAT=text, OTEL_EXPORTER_OTLP_ENDPOINT set:
                a collector's stand-in on loopback (bench/otlp_sink.py) takes the spans, decodes and
                counts them
The three are measured side by side, not one after the other: every caller sends its requests to
each server in turn, so a spell of load from elsewhere on the machine falls on all three alike.
Each round has a latency phase (one caller, back to back on kept-alive connections, time to the
first *content* token as the caller reads it) and a CPU phase (`--concurrency` callers; each
server's CPU seconds over that same span, per request answered). Prometheus is played by a
scraper reading /metrics of both servers that have it every `--scrape-interval` seconds (default
5, three times the usual rate), so the scrapes' cost is in the figures too.

In-process figures beside them: what the metrics calls of one request (in flight, ISS lookup,
outcome, with its histograms) and one JSON log line cost, timed over many calls, exactly.
Loopback only. Writes bench/results/metrics_cost.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.loadgen import chat_body, make_session
from bench.stats import percentile

RESULTS = Path(__file__).resolve().parent / "results"
CHAT_PATH = "/v1/chat/completions"
VARIANTS: dict[str, dict[str, str]] = {
    "off": {"METRICS_ENABLED": "false", "LOG_FORMAT": "text"},
    "metrics": {"METRICS_ENABLED": "true", "LOG_FORMAT": "text"},
    "metrics+json": {"METRICS_ENABLED": "true", "LOG_FORMAT": "json"},
}
TRACING = "metrics+traces"
SINK = "{sink}"  # replaced by the collector's stand-in's URL
TRACING_ENV = {"METRICS_ENABLED": "true", "LOG_FORMAT": "text", "OTEL_EXPORTER_OTLP_ENDPOINT": SINK}
_CONTENT = re.compile(rb'"content":"[^"]')


@dataclass
class Config:
    rounds: int = 4
    latency_requests: int = 250
    cpu_requests: int = 1200
    concurrency: int = 50
    tokens: int = 20
    gap: float = 0.002
    first_token_delay: float = 0.01
    scrape_interval: float = 5.0
    micro_calls: int = 20000
    tracing: bool = False


@dataclass
class Variant:
    name: str
    ttft: list[float] = field(default_factory=list)  # seconds, to the first content token
    cpu_s: float = 0.0
    answered: int = 0
    failed: int = 0
    round_medians: list[float] = field(default_factory=list)
    round_cpu: list[float] = field(default_factory=list)  # CPU ms per request, per round
    scrapes: int = 0
    spans: int = 0  # spans the collector's stand-in received (tracing only)


def variants_of(cfg: Config) -> dict[str, dict[str, str]]:
    return {**VARIANTS, TRACING: TRACING_ENV} if cfg.tracing else dict(VARIANTS)


async def first_content(session: aiohttp.ClientSession, url: str, body: bytes, timeout: float) -> float | None:
    """One streamed request read to its end; seconds to the first content token, None on failure."""
    started = time.perf_counter()
    ttft = None
    done = False
    try:
        async with asyncio.timeout(timeout), session.post(url, data=body) as response:
            tail = b""
            async for block in response.content.iter_any():
                window = tail + block
                if ttft is None and _CONTENT.search(window):
                    ttft = time.perf_counter() - started
                done = done or b"data: [DONE]" in window
                tail = window[-32:]
            if response.status != 200:
                return None
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    return ttft if done else None


async def round_robin(urls: dict[str, str], body: bytes, callers: int, per_server: int, timeout: float = 30.0,
                      start: int = 0) -> tuple[dict[str, list[float]], dict[str, int]]:
    """`callers` callers, each sending its requests to every server in turn (its own connection to
    each, kept alive): every server meets the same load at the same moments, so the machine's
    drift falls on all alike. The cycle begins at server `start` (rounds rotate it, so no server
    always follows the same one). `per_server` requests each; the TTFTs and failures by server."""
    names = list(urls)
    names = names[start % len(names):] + names[:start % len(names)]
    ttfts: dict[str, list[float]] = {name: [] for name in names}
    failures = dict.fromkeys(names, 0)
    issued = 0

    async def caller(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal issued
        turn = index
        while issued < per_server * len(names):
            issued += 1
            name = names[turn % len(names)]
            turn += 1
            ttft = await first_content(session, urls[name], body, timeout)
            if ttft is None:
                failures[name] += 1
            else:
                ttfts[name].append(ttft)

    async with make_session(callers * len(names)) as session:
        await asyncio.gather(*(caller(index, session) for index in range(callers)))
    return ttfts, failures


async def scraper(urls: list[str], interval: float, counts: dict[str, int], stop: asyncio.Event) -> None:
    """Prometheus's part: GET /metrics of every server with metrics on, every `interval` seconds."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            for url in urls:
                try:
                    async with session.get(url + "/metrics") as response:
                        await response.read()
                        if response.status == 200:
                            counts[url] += 1
                except aiohttp.ClientError:
                    pass
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass


async def run(cfg: Config, kids: procs.Children) -> dict[str, Any]:
    upstream = kids.start("upstream", procs.fake_upstream_argv(cfg.tokens, cfg.gap, cfg.first_token_delay))
    sink = kids.start("otlp-sink", [procs.PYTHON, "-m", "bench.otlp_sink", "--port", "0"]) if cfg.tracing else None
    servers = {}
    chosen = variants_of(cfg)
    for name, extra in chosen.items():
        settings = {key: sink.url if value == SINK and sink is not None else value for key, value in extra.items()}
        env = procs.server_env(upstream.url, kids.log_dir / f"cache-{name}", LOG_LEVEL="info", **settings)
        port = procs.free_port()
        servers[name] = kids.start(name.replace("+", "-"), procs.server_argv(port), env=env, port=port)
    variants = {name: Variant(name) for name in chosen}
    body = chat_body(cfg.tokens, cfg.gap, cfg.first_token_delay)
    stop = asyncio.Event()
    scraped = {servers[name].url: 0 for name in chosen if chosen[name]["METRICS_ENABLED"] == "true"}
    scraping = asyncio.ensure_future(scraper(list(scraped), cfg.scrape_interval, scraped, stop))
    urls = {name: child.url + CHAT_PATH for name, child in servers.items()}
    try:
        await round_robin(urls, body, 4, 20)  # warm-up: connections, the ISS warm-up, first imports
        for index in range(cfg.rounds):
            # Latency: one caller, requests back to back, to each server in turn (paired samples).
            ttfts, failed = await round_robin(urls, body, 1, cfg.latency_requests, start=index)
            # CPU: `concurrency` callers, each going round the servers; each server's CPU over the same span.
            before = {name: procs.cpu_seconds(child.process()) for name, child in servers.items()}
            loaded, loaded_failed = await round_robin(urls, body, cfg.concurrency, cfg.cpu_requests, start=index)
            after = {name: procs.cpu_seconds(child.process()) for name, child in servers.items()}
            for name, variant in variants.items():
                variant.ttft += ttfts[name]
                variant.failed += failed[name] + loaded_failed[name]
                variant.round_medians.append(statistics.median(ttfts[name]) if ttfts[name] else float("nan"))
                cpu = after[name] - before[name]
                variant.cpu_s += cpu
                variant.answered += len(loaded[name])
                variant.round_cpu.append(1000 * cpu / max(1, len(loaded[name])))
                print(f"  round {index + 1}/{cfg.rounds} {name:13} ttft p50 {1000 * variant.round_medians[-1]:.3f} ms"
                      f"  cpu {variant.round_cpu[-1]:.3f} ms/request", file=sys.stderr, flush=True)
            for kid in servers.values():
                if not kid.alive():
                    raise RuntimeError(f"{kid.name} died:\n{kid.log_tail()}")
    finally:
        stop.set()
        await scraping
    for name, child in servers.items():
        variants[name].scrapes = scraped.get(child.url, 0)
    if sink is not None:
        await asyncio.sleep(6)  # the SDK's batch processor exports every 5 s: the last batch arrives
        async with aiohttp.ClientSession() as session, session.get(sink.url + "/stats") as response:
            variants[TRACING].spans = (await response.json())["spans"]
        if not variants[TRACING].spans:
            raise RuntimeError("tracing was on, yet no span reached the collector's stand-in")
    return {name: variant for name, variant in variants.items()}


def micro_figures(calls: int) -> dict[str, float]:
    """The chat path's metrics calls for one request, and one JSON log line, in µs (in this process)."""
    from services.chat.endings import Outcome
    from services.chat.exchange import Exchange
    from services.common import request_context
    from services.ops import logs
    from services.ops.metrics import Metrics

    class Nowhere:
        def publish(self, event: dict[str, Any]) -> None:
            return None

    metrics = Metrics(configured_models=("bench-model",))
    records = []
    for _ in range(calls):
        exchange = Exchange(Nowhere(), request_id="r", conversation_id=None, remote_ip=None, path=CHAT_PATH)
        exchange.stream = True
        exchange.upstream_sent = exchange.started + 0.0002
        exchange.first_token_at = exchange.started + 0.05
        exchange.first_written = exchange.first_token_at + 0.0001
        exchange.ended = exchange.started + 0.2
        exchange.outcome = Outcome.DONE
        exchange.status = 200
        exchange.tokens = 20
        exchange.upstream_model = "bench-model"
        records.append(exchange)
    started = time.perf_counter()
    for record in records:
        metrics.started()
        metrics.iss_looked_up(0.00003)
        metrics.outcome(record)
        metrics.ended()
    per_request = (time.perf_counter() - started) / calls

    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logs.JsonFormatter(("sk-bench-not-a-real-key",)))
    text = logging.StreamHandler(io.StringIO())
    text.setFormatter(logs.TextFormatter(("sk-bench-not-a-real-key",)))
    log = logging.getLogger("iss_llm.chat")
    extra = {"outcome": "done", "status": 200, "ttft_ms": 51.2, "total_ms": 201.3, "chunks": 20,
             "upstream_model": "bench-model", "upstream_ttft_ms": 50.1, "finish_reason": "stop"}

    async def lines(target: logging.Handler) -> float:
        request_context.begin("req_0123456789abcdef01234567", CHAT_PATH).conversation_id = "conv-1"
        logging.getLogger().handlers = [target]
        begun = time.perf_counter()
        for _ in range(calls):
            log.info("request %s conversation=%s done finish=%s ttft_ms=%s total_ms=%s chunks=%d",
                     "req_0123456789abcdef01234567", "conv-1", "stop", 51.2, 201.3, 20, extra=extra)
        return (time.perf_counter() - begun) / calls

    root = logging.getLogger()
    previous, level = root.handlers[:], root.level
    root.setLevel(logging.INFO)
    try:
        json_line = asyncio.run(lines(handler))
        text_line = asyncio.run(lines(text))
    finally:
        root.handlers, root.level = previous, level
    return {"metrics_per_request_us": per_request * 1e6, "json_line_us": json_line * 1e6,
            "text_line_us": text_line * 1e6}


def summarize(cfg: Config, variants: dict[str, Variant], micro: dict[str, float],
              started: datetime | None = None) -> dict[str, Any]:
    base = variants["off"]
    rows = []
    for name, variant in variants.items():
        p50 = percentile(variant.ttft, 50)
        p90 = percentile(variant.ttft, 90)
        cpu = 1000 * variant.cpu_s / max(1, variant.answered)
        base_cpu = 1000 * base.cpu_s / max(1, base.answered)
        paired = [a - b for a, b in zip(variant.round_medians, base.round_medians, strict=True)]
        rows.append({
            "variant": name, "env": variants_of(cfg)[name], "spans": variant.spans,
            "latency_requests": len(variant.ttft), "failed": variant.failed,
            "ttft_p50_ms": 1000 * (p50 or 0), "ttft_p90_ms": 1000 * (p90 or 0),
            "added_ttft_p50_ms": 1000 * ((p50 or 0) - (percentile(base.ttft, 50) or 0)),
            "added_ttft_round_medians_ms": [1000 * d for d in paired],
            "cpu_ms_per_request": cpu, "cpu_vs_off_pct": 100 * (cpu / base_cpu - 1) if base_cpu else None,
            "cpu_rounds_ms": variant.round_cpu, "scrapes": variant.scrapes,
        })
    started = started or datetime.now(UTC)
    return {"started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round((datetime.now(UTC) - started).total_seconds()), "config": asdict(cfg), "rows": rows,
            "micro": micro}


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    what = "Metrics, JSON logs and traces" if cfg.get("tracing") else "Metrics and JSON logs"
    lines = [
        f"{what}, off against on, side by side in one run (`{result.get('command', '')}`,"
        f" started {result['started']}, {result.get('elapsed_s', 0) / 60:.1f} min; {cfg['rounds']} rounds;"
        f" latency: 1 caller, {cfg['latency_requests']} requests a server a round; CPU: {cfg['concurrency']} callers,"
        f" {cfg['cpu_requests']} a server; {cfg['tokens']} tokens, upstream first token"
        f" {1000 * cfg['first_token_delay']:g} ms;"
        f" /metrics scraped every {cfg['scrape_interval']:g} s)",
        "",
        "| server | TTFT p50 | TTFT p90 | added TTFT (p50 vs off) | per-round differences | CPU per request"
        " | CPU vs off |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        rounds = " ".join(f"{d:+.3f}" for d in row["added_ttft_round_medians_ms"])
        lines.append(
            f"| {row['variant']} | {row['ttft_p50_ms']:.3f} ms | {row['ttft_p90_ms']:.3f} ms | "
            f"{row['added_ttft_p50_ms']:+.3f} ms | {rounds} | {row['cpu_ms_per_request']:.3f} ms | "
            f"{row['cpu_vs_off_pct']:+.1f}% |")
    traced = [row for row in result["rows"] if row["variant"] == TRACING]
    if traced:
        lines += ["", f"{TRACING}: {traced[0]['spans']:,} spans reached the collector's stand-in (two per request and "
                      "one per layer tool call, batched by the SDK every 5 s)."]
    micro = result["micro"]
    lines += [
        "",
        f"In process: the metrics calls of one request (in flight, ISS lookup, outcome and its histograms) "
        f"{micro['metrics_per_request_us']:.1f} µs; one outcome log line {micro['json_line_us']:.1f} µs as JSON, "
        f"{micro['text_line_us']:.1f} µs as text (formatted and written to memory).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, fewer requests (about 1 minute)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--latency-requests", type=int)
    parser.add_argument("--cpu-requests", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--scrape-interval", type=float)
    parser.add_argument("--tracing", action="store_true", help="a fourth server with OpenTelemetry traces on")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg.rounds, cfg.latency_requests, cfg.cpu_requests, cfg.micro_calls = 2, 80, 300, 5000
    cfg.tracing = args.tracing
    for name in ("rounds", "latency_requests", "cpu_requests", "concurrency", "scrape_interval"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    procs.raise_nofile(4 * cfg.concurrency + 1024)
    started = datetime.now(UTC)
    with procs.Children() as kids, procs.stop_on_signals(kids):
        try:
            variants = asyncio.run(run(cfg, kids))
        except KeyboardInterrupt:
            return 130
        except RuntimeError as exc:
            print(f"benchmark failed: {exc}\nlogs: {kids.log_dir}", file=sys.stderr)
            return 1
    result = summarize(cfg, variants, micro_figures(cfg.micro_calls), started)
    result["command"] = " ".join(["python -m bench.metrics_cost", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics_cost.md").write_text(text + "\n")
    (args.out / "metrics_cost.json").write_text(json.dumps(result, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
