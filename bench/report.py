"""The benchmark's outputs: a Markdown report and a PNG chart (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.figures import LAYERS, PATHS, Target, find
from bench.profiles import PROFILES
from bench.stats import minus


def _n(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The whole report: machine, workload, per-path table, server-vs-relay ratios, memory, targets."""
    rows: list[dict[str, Any]] = result["rows"]
    cfg, machine = result["config"], result["machine"]
    lines = [
        "# Benchmark: the chat relay against the upstream directly and a byte-for-byte relay",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['platform']}. Load generator, fake upstream, relay and server share the machine.",
        f"Run: {result['started']}, {result['elapsed_s']:.0f} s, command `{result['command']}`.",
        "",
        f"Workload: streamed chat requests; the fake upstream waits {cfg['first_token_delay'] * 1000:.0f} ms, "
        f"then sends {cfg['tokens']} content chunks {cfg['gap'] * 1000:.0f} ms apart (22 data events with "
        f"role and finish). Throughput: {cfg['tp_tokens']} chunks, gap 0. Closed loop, keep-alive, "
        f"{cfg['rounds']} interleaved rounds per concurrency (direct, relay, server, order rotated).",
        "",
        "## Latency, throughput and CPU per path",
        "",
        "TTFT: time to the first content token (not the role chunk). Added: this path's percentile minus "
        "the direct path's. CPU: the relay's or server's own process (user+system) per request, in the "
        "latency batches (CPU ms/req) and in the throughput batches the chunks/s come from (gap 0).",
        "",
        "| c | path | TTFT p50 ms | p95 | p99 | added p50 ms | added p95 | added p99 | total p50 ms | "
        "chunks/s (gap 0) | CPU ms/req (gap 0) | CPU ms/req | failed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        direct = row["path"] == "direct"
        lines.append(
            f"| {row['concurrency']} | {row['path']} | {_n(row['ttft_p50'], 2)} | {_n(row['ttft_p95'], 2)} | "
            f"{_n(row['ttft_p99'], 2)} | {'' if direct else _n(row['added_p50'], 2)} | "
            f"{'' if direct else _n(row['added_p95'], 2)} | {'' if direct else _n(row['added_p99'], 2)} | "
            f"{_n(row['total_p50'], 1)} | {_n(row['chunks_per_s'], 0)} | "
            f"{'' if direct else _n(row.get('tp_cpu_ms_per_request'), 2)} | "
            f"{'' if direct else _n(row['cpu_ms_per_request'], 2)} | {row['failed']} |"
        )
    lines += [
        "",
        "## Server against the relay (same run)",
        "",
        "| c | added TTFT p50: server − relay ms | added p99: server / relay | chunks/s: server / relay | "
        "CPU/req: server / relay |",
        "|---:|---:|---:|---:|---:|",
    ]
    for c in result["config"]["concurrency"]:
        s, r = find(rows, "server", c), find(rows, "relay", c)
        if not s or not r:
            continue
        diff = None if s.get("added_p50") is None or r.get("added_p50") is None else s["added_p50"] - r["added_p50"]
        lines.append(
            f"| {c} | {_n(diff, 2)} | {_ratio(s.get('added_p99'), r.get('added_p99'))} | "
            f"{_ratio(s.get('chunks_per_s'), r.get('chunks_per_s'))} | "
            f"{_ratio(s.get('cpu_ms_per_request'), r.get('cpu_ms_per_request'))} |"
        )
    lines += profile_table(result)
    memory = result["memory"]
    lines += [
        "",
        f"## Memory: {result['config']['hold']} streams held open at once",
        "",
        "| process | RSS before MB | RSS with streams open MB | streams open | KB per stream | peak RSS (run) MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for layer in (*LAYERS, "baseline"):
        m = memory.get(layer)
        if not m or "rss_open" not in m:
            continue
        lines.append(
            f"| {layer} | {_n(m['rss_before'] / 2**20)} | {_n(m['rss_open'] / 2**20)} | {m['opened']} | "
            f"{_n(m['kb_per_stream'])} | {_n(m.get('peak_rss', 0) / 2**20)} |"
        )
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for target in result["targets"]:
        t = target if isinstance(target, Target) else Target(**target)
        met = "not measured" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.name} | {t.goal} | {t.measured} | {met} |")
    lines += floors(result["rows"], result.get("profile_rows") or [])
    if result.get("skipped"):
        lines += ["", f"Skipped (time limit): {', '.join(result['skipped'])}."]
    return "\n".join(lines) + "\n"


def floors(rows: list[dict[str, Any]], profile_rows: list[dict[str, Any]], profile: str = "openai") -> list[str]:
    """The server beside its two floors, same run: the aiohttp byte relay (what a Python layer can reach)
    and the bare Tornado relay with an aiohttp client (what the framework itself costs). `server − tornado`
    is the server's own work."""
    levels = sorted({row["concurrency"] for row in profile_rows if row["path"] == "tornado"
                     and row["profile"] == profile and row["connections"] == "reused"})
    lines = [
        "", "## The floors: aiohttp relay, bare Tornado relay, server", "",
        "`tornado` is a Tornado handler relaying the upstream's bytes over one shared aiohttp session with "
        f"nothing else (`bench/tornado_relay.py`). Paced rows: {profile} profile, reused connections, same run.", "",
        "| figure | relay | tornado | server | tornado − relay | server − tornado |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in levels:
        for key, label in (("added_p50", "added first-content TTFT p50 ms"),
                           ("pacing_p95", "token-gap deviation p95 ms")):
            relay, bare, server = (find(profile_rows, path, c, profile).get(key)
                                   for path in ("relay", "tornado", "server"))
            lines.append(
                f"| {label}, c={c} | {_n(relay, 2)} | {_n(bare, 2)} | {_n(server, 2)} | "
                f"{_n(minus(bare, relay), 2)} | {_n(minus(server, bare), 2)} |"
            )
    for c in sorted({row["concurrency"] for row in rows if row["path"] == "tornado"}):
        for key, label in (("chunks_per_s", "chunks/s (gap 0)"),
                           ("tp_cpu_ms_per_request", "CPU ms per request (gap 0)"),
                           ("cpu_ms_per_request", "CPU ms per request")):
            relay, bare, server = (find(rows, path, c).get(key) for path in ("relay", "tornado", "server"))
            lines.append(
                f"| {label}, c={c} | {_n(relay, 2)} | {_n(bare, 2)} | {_n(server, 2)} | "
                f"{_n(minus(bare, relay), 2)} | {_n(minus(server, bare), 2)} |"
            )
    return lines if len(lines) > 6 else []


def profile_table(result: dict[str, Any]) -> list[str]:
    """The paced upstreams: first content token and token pacing per profile, connections, c and path."""
    rows = result.get("profile_rows") or []
    if not rows:
        return []
    lines = [
        "",
        "## Paced upstreams: first content token and token pacing",
        "",
        "Profiles (`bench/profiles.py`): " + "; ".join(
            f"**{p.name}**: {p.description}" for p in PROFILES.values()) + ". Connections: **reused** "
        "(closed-loop clients on keep-alive connections, as agents hold them) or **new** (one per request). "
        "TTFT: time to the first content token; added: minus the direct path's. Pacing: |gap out − gap in| "
        "between consecutive content tokens, the upstream's send times read from a stamp in each chunk.",
        "",
        "| profile | connections | c | path | TTFT p50 ms | p95 | added p50 ms | added p95 | "
        "pacing p50 ms | pacing p95 ms | tokens | failed |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        direct = row["path"] == "direct"
        lines.append(
            f"| {row['profile']} | {row['connections']} | {row['concurrency']} | {row['path']} | "
            f"{_n(row['ttft_p50'], 2)} | {_n(row['ttft_p95'], 2)} | {'' if direct else _n(row['added_p50'], 2)} | "
            f"{'' if direct else _n(row['added_p95'], 2)} | {_n(row['pacing_p50'], 2)} | "
            f"{_n(row['pacing_p95'], 2)} | {row['tokens_paced']} | {row['failed']} |"
        )
    return lines


def chart(result: dict[str, Any], path: Path) -> Path:
    """Four panels: added TTFT p50/p99, chunks/s, CPU per request, memory per open stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    conc = result["config"]["concurrency"]
    colors = {"direct": "#888888", "relay": "#1f77b4", "tornado": "#2ca02c", "server": "#d62728",
              "baseline": "#ff9896"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    x = range(len(conc))
    width = 0.27

    ax = axes[0][0]
    for i, layer in enumerate(LAYERS):
        p50 = [find(rows, layer, c).get("added_p50") or 0.0 for c in conc]
        p99 = [find(rows, layer, c).get("added_p99") or 0.0 for c in conc]
        pos = [v + (i - 1) * width for v in x]
        ax.bar(pos, p99, width, color=colors[layer], alpha=0.35, label=f"{layer} p99")
        ax.bar(pos, p50, width, color=colors[layer], label=f"{layer} p50")
    ax.set_title("Added time to first token (vs direct)")
    ax.set_ylabel("ms")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=8)

    ax = axes[0][1]
    width4 = 0.2
    for i, p in enumerate(PATHS):
        values = [find(rows, p, c).get("chunks_per_s") or 0.0 for c in conc]
        ax.bar([v + (i - 1.5) * width4 for v in x], values, width4, color=colors[p], label=p)
    ax.set_title("Chunks relayed per second (gap 0)")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    for i, layer in enumerate(LAYERS):
        values = [find(rows, layer, c).get("cpu_ms_per_request") or 0.0 for c in conc]
        ax.bar([v + (i - 1) * width for v in x], values, width, color=colors[layer], label=layer)
    ax.set_title("CPU per request in the layer's process")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)

    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        ax.set_xticks(list(x), [f"c={c}" for c in conc])
        ax.grid(axis="y", alpha=0.3)

    ax = axes[1][1]
    memory = result["memory"]
    layers = [layer for layer in (*LAYERS, "baseline") if "kb_per_stream" in memory.get(layer, {})]
    values = [memory[layer]["kb_per_stream"] or 0.0 for layer in layers]
    ax.bar(layers, values, color=[colors[layer] for layer in layers])
    ax.axhline(50, color="black", linestyle="--", linewidth=1, label="target: 50 KB")
    ax.set_title(f"Memory per open stream ({result['config']['hold']} open)")
    ax.set_ylabel("KB")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    machine = result["machine"]
    fig.suptitle(
        f"iss-llm relay benchmark — {machine['cpus']} CPUs, {machine['cpu_model']}, Python {machine['python']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
