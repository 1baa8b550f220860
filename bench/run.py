"""The benchmark: upstream directly, through the aiohttp relay, the bare Tornado relay and the server, interleaved.

    python -m bench.run            # full run: c = 1, 50, 200, 1000 and the paced profiles (about 10 minutes)
    python -m bench.run --quick    # c = 1, 50, 200, the profiles and the memory check (about 2 minutes)

Writes bench/results/bench-<time>.{md,png,json} and copies them to bench/results/latest.*.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from tqdm import tqdm

from bench import procs
from bench.figures import LAYERS, PATHS, Cell, targets, with_added
from bench.loadgen import Batch, chat_body, hold_open, run_batch
from bench.profiles import PROFILES, RUNS
from bench.report import chart, markdown

RESULTS = Path(__file__).resolve().parent / "results"
CHAT_PATH = "/v1/chat/completions"


@dataclass
class Config:
    """What one run measures; the defaults are the full run."""

    concurrency: list[int] = field(default_factory=lambda: [1, 50, 200, 1000])
    rounds: int = 3
    tokens: int = 20
    gap: float = 0.002
    first_token_delay: float = 0.02
    tp_tokens: int = 100
    hold: int = 1000
    scale: float = 1.0
    batch_budget: float = 40.0
    max_seconds: float = 1200.0
    request_timeout: float = 60.0
    console: bool = True
    log_level: str = "info"
    baseline: str | None = None  # another checkout whose server runs as the extra path "baseline"
    # Paced upstreams (bench.profiles): (profile, connections) pairs, at these concurrencies.
    profile_runs: list[tuple[str, str]] = field(default_factory=lambda: list(RUNS))
    profile_concurrency: list[int] = field(default_factory=lambda: [1, 50])

    def latency_requests(self, c: int) -> int:
        """Requests per round and path at concurrency c (enough for a p99 once pooled)."""
        return max(c, int(max(50, 3 * c) * self.scale))

    def throughput_requests(self, c: int) -> int:
        return max(c, int(max(20, c) * self.scale))

    def profile_requests(self, c: int) -> int:
        """Requests per round and path for a paced profile: a dozen at c=1, two per worker above."""
        return max(c, int(max(12, 2 * c) * self.scale))


def machine_info() -> dict[str, Any]:
    """CPU count and model, Python version and platform, for the report."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()}",
    }


class Bench:
    """One run: the three processes, the cells being filled, the progress bar and the time limit."""

    def __init__(self, cfg: Config, kids: procs.Children, progress: tqdm) -> None:
        self.cfg = cfg
        self.kids = kids
        self.progress = progress
        self.deadline = time.monotonic() + cfg.max_seconds
        self.cells: dict[tuple[str, int], Cell] = {}
        self.profile_cells: dict[tuple[str, str, str, int], Cell] = {}
        self.memory: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []
        cache = kids.log_dir / "iss-cache"
        self.upstream = kids.start("upstream", procs.fake_upstream_argv(cfg.tokens, cfg.gap, cfg.first_token_delay))
        self.relay = kids.start("relay", procs.relay_argv(self.upstream.url))
        # Tornado + one aiohttp client relaying bytes: the framework's floor.
        self.tornado = kids.start("tornado", procs.tornado_relay_argv(self.upstream.url))
        env = procs.server_env(
            self.upstream.url, cache, CONSOLE_ENABLED=str(cfg.console).lower(), LOG_LEVEL=cfg.log_level,
            UPSTREAM_TIMEOUT=str(cfg.request_timeout),
        )
        port = procs.free_port()
        self.server = kids.start("server", procs.server_argv(port), env=env, port=port)
        self.proc = {
            "upstream": self.upstream.process(), "relay": self.relay.process(), "server": self.server.process(),
            "tornado": self.tornado.process(),
        }
        self.urls = {
            "direct": self.upstream.url + CHAT_PATH,
            "relay": self.relay.url + CHAT_PATH,
            "tornado": self.tornado.url + CHAT_PATH,
            "server": self.server.url + CHAT_PATH,
        }
        self.paths: list[str] = list(PATHS)
        self.children = [self.upstream, self.relay, self.tornado, self.server]
        if cfg.baseline:
            # Before/after a change in one run: the same workload through another checkout's server.
            port = procs.free_port()
            base = kids.start("baseline", procs.server_argv(port), env=env, cwd=Path(cfg.baseline).resolve(), port=port)
            self.proc["baseline"] = base.process()
            self.urls["baseline"] = base.url + CHAT_PATH
            self.paths.append("baseline")
            self.children.append(base)
        self.profile_paths = list(self.paths)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def check_alive(self) -> None:
        for child in self.children:
            if not child.alive():
                raise RuntimeError(f"{child.name} died (exit {child.popen.returncode}):\n{child.log_tail()}")

    def cell(self, path: str, c: int) -> Cell:
        return self.cells.setdefault((path, c), Cell(path, c))

    def _tick(self, _sample: Any) -> None:
        self.progress.update(1)

    async def batch(self, path: str, body: bytes, c: int, n: int, *, reuse: bool = True,
                    stamped: bool = False) -> tuple[Batch, float, float]:
        """One closed-loop batch; returns it with the layer's and the upstream's CPU seconds."""
        layer = self.proc.get(path) if path != "direct" else None
        layer_before = procs.cpu_seconds(layer) if layer else 0.0
        up_before = procs.cpu_seconds(self.proc["upstream"])
        batch = await run_batch(
            self.urls[path], body, c, n,
            time_budget=min(self.cfg.batch_budget, max(1.0, self.time_left())),
            request_timeout=self.cfg.request_timeout, on_sample=self._tick, reuse=reuse, stamped=stamped,
        )
        layer_cpu = procs.cpu_seconds(layer) - layer_before if layer else 0.0
        up_cpu = procs.cpu_seconds(self.proc["upstream"]) - up_before
        self.check_alive()
        return batch, layer_cpu, up_cpu

    async def warm_up(self) -> None:
        body = chat_body(self.cfg.tokens, self.cfg.gap, self.cfg.first_token_delay)
        for path in self.profile_paths:
            self.progress.set_postfix_str(f"warm-up {path}")
            await self.batch(path, body, 4, 40)

    async def hold(self, layer: str) -> None:
        """Hold cfg.hold streams open through `layer` and measure its RSS before and with them."""
        cfg = self.cfg
        self.progress.set_postfix_str(f"{cfg.hold} open streams via {layer}")
        proc = self.proc[layer]
        await asyncio.sleep(0.5)
        before = proc.memory_info().rss
        measured: dict[str, Any] = {}

        async def measure(opened: int) -> None:
            await asyncio.sleep(0.5)
            rss = 0
            for _ in range(5):
                rss = max(rss, proc.memory_info().rss)
                await asyncio.sleep(0.2)
            measured.update(opened=opened, rss_open=rss)

        # Long, slow streams: they outlast the time it takes to open all of them.
        body = chat_body(tokens=400, gap=0.5, first_token_delay=0.0)
        opened = await hold_open(self.urls[layer], body, cfg.hold, measure, open_timeout=min(60.0, self.time_left()))
        self.progress.update(cfg.hold)
        rss_open = measured.get("rss_open", before)
        self.memory[layer] = {
            "rss_before": before,
            "rss_open": rss_open,
            "opened": opened,
            "kb_per_stream": (rss_open - before) / 1024 / opened if opened else None,
        }
        await self.settle(layer)
        self.check_alive()

    async def settle(self, layer: str, timeout: float = 15.0) -> None:
        """Wait until the layer has closed the abandoned streams (server: /healthz in_flight == 0)."""
        if layer != "server":
            await asyncio.sleep(1.0)
            return
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                async with session.get(self.server.url + "/healthz") as response:
                    health = await response.json()
                if health.get("chat", {}).get("in_flight", 0) == 0:
                    return
                await asyncio.sleep(0.2)

    def rotated(self, round_index: int, paths: list[str] | None = None) -> list[str]:
        """The paths in an order that changes each round, so drift hits each path alike."""
        paths = self.paths if paths is None else paths
        k = round_index % len(paths)
        return [*paths[k:], *paths[:k]]

    async def stage(self, c: int) -> None:
        cfg = self.cfg
        latency_body = chat_body(cfg.tokens, cfg.gap, cfg.first_token_delay)
        tp_body = chat_body(cfg.tp_tokens, 0.0, 0.0)
        for r in range(cfg.rounds):
            for path in self.rotated(r):
                if self.time_left() <= 0:
                    self.skipped.append(f"latency c={c} round {r + 1} {path}")
                    continue
                self.progress.set_postfix_str(f"c={c} latency round {r + 1}/{cfg.rounds}: {path}")
                batch, layer_cpu, up_cpu = await self.batch(path, latency_body, c, cfg.latency_requests(c))
                self.cell(path, c).add_latency(batch, layer_cpu, up_cpu)
        for r in range(cfg.rounds):
            for path in self.rotated(r):
                if self.time_left() <= 0:
                    self.skipped.append(f"throughput c={c} round {r + 1} {path}")
                    continue
                self.progress.set_postfix_str(f"c={c} throughput round {r + 1}/{cfg.rounds}: {path}")
                batch, layer_cpu, _ = await self.batch(path, tp_body, c, cfg.throughput_requests(c))
                self.cell(path, c).add_throughput(batch, layer_cpu)

    async def profile_stage(self, name: str, connections: str, c: int) -> None:
        """A paced upstream: time to first content and token pacing, per path, interleaved rounds."""
        profile = PROFILES[name]
        for r in range(self.cfg.rounds):
            for path in self.rotated(r, self.profile_paths):
                if self.time_left() <= 0:
                    self.skipped.append(f"{name} {connections} c={c} round {r + 1} {path}")
                    continue
                self.progress.set_postfix_str(f"{name}, {connections} connections, c={c}, round {r + 1}: {path}")
                batch, layer_cpu, up_cpu = await self.batch(
                    path, profile.body(), c, self.cfg.profile_requests(c), reuse=connections == "reused", stamped=True,
                )
                cell = self.profile_cells.setdefault(
                    (name, connections, path, c), Cell(path, c, profile=name, connections=connections))
                cell.add_latency(batch, layer_cpu, up_cpu)

    async def run(self) -> None:
        await self.warm_up()
        # Memory first, right after the warm-up, so the baseline is not inflated by earlier load.
        # Every layer holds the streams: when only the server did, the same code measured 15%
        # more CPU per request at c=200 as 'server' than as 'baseline'.
        layers = [*LAYERS, *(["baseline"] if "baseline" in self.proc else [])]
        if self.cfg.hold > 0:
            for layer in ("server", "relay", "tornado", *layers[len(LAYERS):]):
                await self.hold(layer)
        for c in self.cfg.concurrency:
            await self.stage(c)
        for name, connections in self.cfg.profile_runs:
            for c in self.cfg.profile_concurrency:
                await self.profile_stage(name, connections, c)
        for layer in layers:
            self.memory.setdefault(layer, {})["peak_rss"] = procs.vm_hwm_bytes(self.proc[layer].pid)

    def planned(self) -> int:
        cfg = self.cfg
        per_round = sum(cfg.latency_requests(c) + cfg.throughput_requests(c) for c in cfg.concurrency)
        profiled = len(cfg.profile_runs) * sum(cfg.profile_requests(c) for c in cfg.profile_concurrency)
        return (len(self.paths) * (40 + cfg.rounds * per_round) + 40 + len(self.profile_paths) * cfg.rounds * profiled
                + (len(self.paths) - 1) * cfg.hold)


def result_of(bench: Bench, started: datetime, elapsed: float, command: str) -> dict[str, Any]:
    """Everything the report and the chart need, as JSON-ready data."""
    rows = with_added([
        bench.cells[(path, c)].figures()
        for c in bench.cfg.concurrency for path in bench.paths if (path, c) in bench.cells
    ])
    profile_rows = with_added([
        cell.figures() for (name, connections, path, c), cell in sorted(
            bench.profile_cells.items(),
            key=lambda item: (bench.cfg.profile_runs.index(item[0][:2]), item[0][3],
                              bench.profile_paths.index(item[0][2])),
        )
    ])
    return {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": elapsed,
        "command": command,
        "machine": machine_info(),
        "config": asdict(bench.cfg),
        "rows": rows,
        "profile_rows": profile_rows,
        "memory": bench.memory,
        "targets": [asdict(t) for t in targets(rows, bench.memory, bench.cfg.hold, profile_rows)],
        "skipped": bench.skipped,
    }


def write_outputs(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path]:
    """The Markdown table, the PNG chart and the raw JSON, plus copies named latest.*."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    md = out_dir / f"bench-{stamp}.md"
    png = out_dir / f"bench-{stamp}.png"
    raw = out_dir / f"bench-{stamp}.json"
    md.write_text(markdown(result))
    chart(result, png)
    raw.write_text(json.dumps(result, indent=1, default=str))
    for path in (md, png, raw):
        shutil.copyfile(path, out_dir / f"latest{path.suffix}")
    return md, png, raw


def parse_args(argv: list[str] | None) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(description="benchmark: upstream direct vs floor relay vs server")
    parser.add_argument("--quick", action="store_true", help="c = 1, 50, 200, fewer requests (about 1 minute)")
    parser.add_argument("--concurrency", help="comma-separated levels (default 1,50,200,1000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per level (default 3)")
    parser.add_argument("--scale", type=float, help="multiply the request counts (default 1)")
    parser.add_argument("--tokens", type=int, help="content chunks per stream (default 20)")
    parser.add_argument("--gap", type=float, help="seconds between chunks (default 0.002)")
    parser.add_argument("--first-token-delay", type=float, help="upstream's seconds to first chunk (default 0.02)")
    parser.add_argument("--hold", type=int, help="streams held open for the memory figure (default 1000)")
    parser.add_argument("--max-seconds", type=float, help="stop starting batches after this (default 1200)")
    parser.add_argument("--no-console", action="store_true", help="run the server with CONSOLE_ENABLED=false")
    parser.add_argument("--log-level", default="info", help="the server's LOG_LEVEL (default info)")
    parser.add_argument("--baseline", help="another checkout: its server runs too, as the path 'baseline'")
    parser.add_argument("--profiles", help="paced upstreams as profile:connections pairs, e.g. "
                        "openai:reused,openai:new ('none' for none; default: all of bench.profiles.RUNS)")
    parser.add_argument("--profile-concurrency", help="comma-separated levels for the profiles (default 1,50)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default bench/results)")
    args = parser.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg.concurrency, cfg.rounds, cfg.scale, cfg.max_seconds = [1, 50, 200], 2, 0.4, 300.0
    if args.concurrency:
        cfg.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    for name in ("rounds", "scale", "tokens", "gap", "first_token_delay", "hold", "max_seconds"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.profiles:
        pairs = [item.strip().split(":") for item in args.profiles.split(",") if item.strip() and item != "none"]
        for pair in pairs:
            if len(pair) != 2 or pair[0] not in PROFILES or pair[1] not in ("reused", "new"):
                parser.error(f"--profiles: {':'.join(pair)} is not profile:reused|new ({', '.join(PROFILES)})")
        cfg.profile_runs = [(name, connections) for name, connections in pairs]
    if args.profile_concurrency:
        cfg.profile_concurrency = [int(c) for c in args.profile_concurrency.split(",") if c.strip()]
    cfg.console = not args.no_console
    cfg.baseline = args.baseline
    cfg.log_level = args.log_level
    return cfg, args.out


def main(argv: list[str] | None = None) -> int:
    cfg, out_dir = parse_args(argv)
    limit = procs.raise_nofile(4 * max([cfg.hold, *cfg.concurrency]) + 1024)
    if limit < 3 * max([cfg.hold, *cfg.concurrency]):
        print(f"open-file limit {limit} is too low for {cfg.hold} streams", file=sys.stderr)
        return 2
    started, t0 = datetime.now(UTC), time.monotonic()
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    with procs.Children() as kids, procs.stop_on_signals(kids):
        try:
            progress = tqdm(total=0, unit="req", dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
            with progress:
                bench = Bench(cfg, kids, progress)
                progress.total = bench.planned()
                progress.refresh()
                asyncio.run(bench.run())
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the fake upstream, relay and server", file=sys.stderr)
            return 130
        except (RuntimeError, psutil.Error) as exc:
            print(f"benchmark failed: {exc}\nlogs: {kids.log_dir}", file=sys.stderr)
            return 1
    result = result_of(bench, started, time.monotonic() - t0, command.strip())
    md, png, raw = write_outputs(result, out_dir)
    print(markdown(result))
    print(f"table: {md}\nchart: {png}\ndata:  {raw}\nlogs:  {kids.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
