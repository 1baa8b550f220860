"""The benchmark's parts behave: the floor relay copies bytes, the load generator counts right,
the targets are judged as stated, the report and chart are written, children are always stopped.
Figures come from `python -m bench.run`, never from a test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys

import orjson
import psutil
import pytest
from aiohttp import web

from bench import badinput, costs, procs, storm
from bench.figures import Cell, pacing_targets, targets, with_added
from bench.loadgen import chat_body, run_batch, stream_once
from bench.relay import make_relay
from bench.report import chart, markdown
from bench.stats import percentile
from bench.tornado_relay import make_tornado_relay, new_session
from tests.fakes.openai_upstream import FakeUpstream

# An SSE answer cut at awkward places: inside "data: ", inside a payload, between events.
PIECES = [b"da", b"ta: {\"a\":1}\n", b"\ndata: {\"b\"", b":2}\n\ndata:", b" [DONE]\n\n"]


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


async def _pieces_app_answer(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in PIECES:
        await response.write(piece)
        await asyncio.sleep(0.01)
    return response


def _pieces_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _pieces_app_answer)
    return app


async def test_relay_forwards_the_bytes_unchanged_and_the_load_generator_counts_them():
    origin, origin_url = await _serve(_pieces_app())
    relay, relay_url = await _serve(make_relay(origin_url))
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.post(relay_url + "/v1/chat/completions", data=b"{}") as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                assert await response.read() == b"".join(PIECES)
            sample = await stream_once(session, relay_url + "/v1/chat/completions", b"{}", 5.0)
        assert sample.ok and sample.done and sample.chunks == 2
        assert sample.ttft is not None and 0 < sample.ttft <= sample.total
    finally:
        await relay.cleanup()
        await origin.cleanup()


@contextlib.asynccontextmanager
async def _relay(upstream_url: str):
    """bench/relay.py's aiohttp app on a loopback port of this loop."""
    relay, relay_url = await _serve(make_relay(upstream_url))
    try:
        yield relay_url
    finally:
        await relay.cleanup()


@contextlib.asynccontextmanager
async def _tornado(upstream_url: str):
    """bench/tornado_relay.py's Tornado app on a loopback port of this loop."""
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    session = new_session()
    sock, port = bind_unused_port()
    server = HTTPServer(make_tornado_relay(upstream_url, session))
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await session.close()


async def test_the_tornado_relay_forwards_the_bytes_and_the_key_unchanged():
    seen: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        return await _pieces_app_answer(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    origin, origin_url = await _serve(app)
    try:
        async with _tornado(origin_url) as url:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/v1/chat/completions", data=b"{}",
                                        headers={"Authorization": "Bearer sk-x"}) as response:
                    assert response.headers["Content-Type"].startswith("text/event-stream")
                    assert await response.read() == b"".join(PIECES)
        assert seen and seen[0]["Authorization"] == "Bearer sk-x"
    finally:
        await origin.cleanup()


@pytest.mark.parametrize("serve", [_relay, _tornado], ids=["relay", "tornado"])
async def test_the_floors_stop_the_upstream_stream_when_the_caller_leaves(serve):
    upstream = await FakeUpstream(tokens=500, gap=0.02).start()
    try:
        async with serve(f"http://127.0.0.1:{upstream.port}") as url:
            batch = await run_batch(url + "/v1/chat/completions", chat_body(500, 0.02, 0.0), 3, 3,
                                    time_budget=5.0, request_timeout=0.3)
            assert [s.error for s in batch.samples] == ["timeout"] * 3  # the callers gave up mid-stream
            assert await upstream.wait_streams_closed(2.0)
            assert upstream.aborted_streams == 3
    finally:
        await upstream.close()


async def test_load_generator_reports_failures_instead_of_raising():
    batch = await run_batch(f"http://127.0.0.1:{procs.free_port()}/v1/chat/completions", b"{}", 2, 4,
                            time_budget=5.0, request_timeout=1.0)
    assert len(batch.samples) == 4 and batch.failed == 4 and not batch.ok


async def test_load_generator_times_the_first_content_token_and_the_token_pacing():
    upstream = await FakeUpstream().start()
    try:
        body = chat_body(6, 0.01, 0.03, stamp=True, pause_at=4, pause=0.1)
        batch = await run_batch(upstream.base_url + "/chat/completions", body, 1, 2, time_budget=10.0, stamped=True)
    finally:
        await upstream.close()
    for sample in batch.samples:
        assert sample.ok, sample.error
        # The role chunk came at once, content only after the upstream's gap: ttfc is content's.
        assert sample.ttft is not None and sample.ttfc is not None and sample.ttfc > sample.ttft
        # One deviation per content token after the first; the 0.1 s pause is in both gaps, not in the deviation.
        assert len(sample.pacing) == 5 and all(0 <= gap < 0.1 for gap in sample.pacing)
    cell = Cell("direct", 1, profile="openai")
    cell.add_latency(batch, 0.0, 0.0)
    figures = cell.figures()
    assert figures["tokens_paced"] == 10 and figures["pacing_p95"] is not None and figures["profile"] == "openai"


@pytest.mark.parametrize(("reuse", "connections"), [(True, 1), (False, 4)])
async def test_load_generator_reuses_connections_or_opens_new_ones(reuse, connections):
    peers: set = set()

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n')
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner, url = await _serve(app)
    try:
        batch = await run_batch(url + "/v1/chat/completions", b"{}", 1, 4, time_budget=10.0, reuse=reuse)
    finally:
        await runner.cleanup()
    assert len(batch.ok) == 4 and all(s.ttfc is not None for s in batch.samples)
    assert len(peers) == connections


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 99) == 99


def _row(path: str, c: int, ttft: float, cps: float | None = None, cpu: float | None = None) -> dict:
    return {"path": path, "concurrency": c, "requests": 10, "failed": 0, "errors": {},
            "ttft_p50": ttft, "ttft_p95": ttft, "ttft_p99": ttft * 2, "total_p50": ttft * 3, "total_p99": ttft * 4,
            "chunks_per_s": cps, "cpu_ms_per_request": cpu, "upstream_cpu_ms_per_request": 1.0}


def _result(server_ttft: float, server_cps: float, kb: float, server_cpu: float = 1.4) -> dict:
    rows = with_added([
        _row("direct", 1, 20.0, 1000.0), _row("relay", 1, 21.0, 900.0, 1.0), _row("server", 1, server_ttft, 800.0, 1.5),
        _row("direct", 200, 50.0, 30000.0), _row("relay", 200, 60.0, 25000.0, 1.0),
        _row("server", 200, 70.0, server_cps, server_cpu),
    ])
    held = {"rss_before": 2**20, "rss_open": 2**21, "opened": 1000, "peak_rss": 2**22}
    memory = {"relay": {**held, "kb_per_stream": 20.0}, "server": {**held, "kb_per_stream": kb}}
    return {"rows": rows, "memory": memory}


def test_targets_are_judged_against_the_relay_in_the_same_run():
    good = _result(server_ttft=21.5, server_cps=18000.0, kb=40.0)
    met = {t.name: t.met for t in targets(good["rows"], good["memory"], 1000, _profile_rows(1.0))}
    assert len(met) == 8 and all(met.values()), met
    bad = _result(server_ttft=25.0, server_cps=17000.0, kb=80.0, server_cpu=1.6)
    met = {t.name: t.met for t in targets(bad["rows"], bad["memory"], 1000)}
    assert met["added TTFT p50, c=1"] is False  # 5 ms added vs the relay's 1 ms
    assert met["chunks/s, 200 streams, gap 0"] is False  # 68% of the relay's (72% passes above)
    assert met["1000 open streams in the server"] is False
    assert met["CPU per request, c=200"] is False  # 1.6 vs 1.0: over 1.5x (1.4 passes above)
    assert met["added TTFT p99, c=200"] is True  # 40 ms vs the relay's 20 ms


def _profile_rows(server_pacing: float) -> list[dict]:
    rows = []
    for c in (1, 50):
        for path, ttft, pacing in (("direct", 60.0, 0.2), ("relay", 61.0, 0.5), ("server", 61.5, server_pacing)):
            rows.append({**_row(path, c, ttft), "profile": "openai", "connections": "reused",
                         "pacing_p50": pacing / 2, "pacing_p95": pacing, "tokens_paced": 100})
    return with_added(rows)


def test_pacing_targets_are_judged_against_the_relay():
    met = [t.met for t in pacing_targets(_profile_rows(1.2))]
    assert met == [True, True, True]  # TTFT 0.5 ms more than the relay's, pacing 0.7 ms more
    met = [t.met for t in pacing_targets(_profile_rows(3.0))]
    assert met == [True, False, False]  # pacing 2.5 ms worse than the relay's: over 1 ms and 2 ms
    assert [t.met for t in pacing_targets([])] == [None, None, None]


def test_report_and_chart_are_written(tmp_path):
    result = _result(server_ttft=22.0, server_cps=20000.0, kb=45.0)
    result.update(
        started="now", elapsed_s=1.0, command="python -m bench.run", skipped=[],
        machine={"cpus": 2, "cpu_model": "test CPU", "python": "3.11", "platform": "Linux"},
        config={"concurrency": [1, 200], "tokens": 20, "gap": 0.002, "first_token_delay": 0.02, "tp_tokens": 100,
                "rounds": 3, "hold": 1000},
        targets=[t.__dict__ for t in targets(result["rows"], result["memory"], 1000)],
    )
    # A --baseline run holds the streams through the other checkout's server too.
    result["memory"]["baseline"] = {**result["memory"]["server"], "kb_per_stream": 51.5}
    result["profile_rows"] = _profile_rows(1.0)
    text = markdown(result)
    assert "| openai | reused | 50 | server |" in text.split("## Paced upstreams")[1]
    assert "| 200 | server |" in text and "## Targets" in text and "test CPU" in text
    assert "| baseline |" in text.split("## Memory")[1] and "51.5" in text
    png = chart(result, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soak_classifies_answers():
    done = b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    assert storm.classify(200, done, "text/event-stream").kind == "completed"
    assert storm.classify(200, done[:-14], "text/event-stream").detail == "no_done"
    error = b'{"error":{"message":"m","type":"t","param":null,"code":"upstream_dropped"}}'
    error_event = b"data: " + error + b"\n\ndata: [DONE]\n\n"
    assert storm.classify(200, error_event, "text/event-stream").detail == "upstream_dropped"
    error_body = orjson.dumps({"error": {"message": "m", "type": "t", "param": None, "code": "upstream_timeout"}})
    assert storm.classify(504, error_body, "application/json").kind == "error"
    assert storm.classify(500, error_body, "application/json").kind == "lost"
    assert storm.classify(502, b"<html>", "text/html").kind == "lost"


def test_bad_input_answers_are_judged():
    error = orjson.dumps({"error": {"message": "m", "type": "t", "param": None, "code": None}})
    assert badinput.judge(400, error, closed=True) == "4xx_json"
    assert badinput.judge(400, b"", closed=True) == "closed"  # tornado's bare 400 for garbage HTTP
    assert badinput.judge(404, b"not json", closed=True) == "4xx_not_json"
    assert badinput.judge(500, error, closed=True) == "5xx"
    assert badinput.judge(None, b"", closed=True) == "closed"
    chunked = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert badinput._split(chunked) == (400, b"abcde")


def test_children_are_stopped_when_the_block_fails(tmp_path):
    script = "import time; print('up on http://127.0.0.1:1234', flush=True); time.sleep(60)"
    with pytest.raises(RuntimeError, match="boom"), procs.Children(tmp_path) as kids:
        child = kids.start("sleeper", [sys.executable, "-c", script])
        assert child.port == 1234 and child.alive()
        raise RuntimeError("boom")
    assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE


def test_a_child_that_will_not_stop_is_killed_with_the_processes_it_started(tmp_path):
    # A server deaf to SIGTERM: past the timeout, SIGKILL reaches its workers too, not the parent alone.
    script = ("import os, signal, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "pid = os.fork()\n"
              "if pid == 0:\n    time.sleep(60)\n    os._exit(0)\n"
              "print(f'up on http://127.0.0.1:1234 worker {pid}', flush=True)\n"
              "time.sleep(60)\n")
    with procs.Children(tmp_path) as kids:
        child = kids.start("deaf", [sys.executable, "-c", script])
        worker = psutil.Process(int(child.log_path.read_text().split("worker ")[1].split()[0]))
        try:
            assert kids.stop(child, timeout=1.0) == -9
            _, alive = psutil.wait_procs([worker], timeout=10)
            assert not alive, "the child's own child outlived it"
        finally:
            with contextlib.suppress(psutil.Error):
                worker.kill()


def test_benchmark_command_writes_its_table_chart_and_data(tmp_path):
    """One tiny run of the real command: three processes, every path, the outputs and their paths."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--concurrency", "1,4", "--rounds", "1", "--scale", "0.2",
         "--hold", "20", "--max-seconds", "60", "--out", str(tmp_path),
         "--profiles", "openai:reused,thinking:new", "--profile-concurrency", "2"],
        cwd=procs.ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"table: {tmp_path}" in out.stdout and f"chart: {tmp_path}" in out.stdout
    data = json.loads((tmp_path / "latest.json").read_text())
    assert {(r["path"], r["concurrency"]) for r in data["rows"]} == {
        (p, c) for p in ("direct", "relay", "tornado", "server") for c in (1, 4)
    }
    assert all(r["failed"] == 0 for r in data["rows"]), data["rows"]
    # Each layer's CPU in the throughput batches too, not only in the latency ones (the relays' few
    # milliseconds may read 0 at the clock's 10 ms; the server's 100-chunk requests never do).
    assert all(r["tp_cpu_ms_per_request"] is not None for r in data["rows"] if r["path"] != "direct"), data["rows"]
    assert all(r["tp_cpu_ms_per_request"] > 0 for r in data["rows"] if r["path"] == "server"), data["rows"]
    assert data["memory"]["server"]["opened"] == 20
    assert {(r["profile"], r["connections"], r["path"]) for r in data["profile_rows"]} == {
        (p, conn, path) for p, conn in (("openai", "reused"), ("thinking", "new"))
        for path in ("direct", "relay", "tornado", "server")
    }
    assert all(r["failed"] == 0 and r["tokens_paced"] > 0 for r in data["profile_rows"]), data["profile_rows"]
    assert (tmp_path / "latest.png").stat().st_size > 10_000
    report = (tmp_path / "latest.md").read_text()
    assert "## Targets" in report
    assert "CPU ms/req (gap 0)" in report
    assert "## The floors: aiohttp relay, bare Tornado relay, server" in report


def test_costs_reports_each_helper_against_its_budget():
    figures = costs.run(lookups=50, calls=50, publishes=2000)
    assert len(figures) == 8
    assert all(figure.value > 0 for figure in figures)
    table = costs.markdown(figures)
    assert all(figure.name in table for figure in figures)
    assert costs.Figure("over", 6.0, "ms", 5.0).within is False
    assert costs.Figure("under", 4.0, "ms", 5.0).within is True


def test_workers_latency_row_reads_percentiles_on_the_0_to_100_scale():
    from bench.workers import latency_row

    row = latency_row([i / 1000 for i in range(1, 101)], relay_p99=0.050)
    assert row["ttft_p50_ms"] == pytest.approx(50.5)
    assert row["ttft_p99_ms"] == pytest.approx(99.01)
    assert row["added_ttft_p99_ms"] == pytest.approx(49.01)
    assert latency_row([0.01, 0.02], relay_p99=None)["added_ttft_p99_ms"] is None


def test_workers_command_measures_each_path_and_writes_its_report(tmp_path):
    """One tiny run of the real command: relay, 1 and 2 workers, throughput, TTFT and pacing."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.workers", "--rounds", "1", "--requests", "20", "--concurrency", "4",
         "--paced-concurrency", "2", "--poll-seconds", "0", "--out", str(tmp_path)],
        cwd=procs.ROOT, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "workers.json").read_text())
    assert set(result["paths"]) == {"relay", "server 1 worker", "server 2 workers"}
    for path, row in result["paths"].items():
        assert row["failed"] == 0, (path, row)
        assert row["chunks_per_s"] > 0
        assert row["ttft_p99_ms"] >= row["ttft_p50_ms"] > 0
        assert row["pacing_p95_ms"] >= row["pacing_p50_ms"] >= 0
        assert row["paced_ttfc_p50_ms"] > 50  # the openai profile's role chunk comes at 50 ms
    assert "pacing p50 · p95" in (tmp_path / "workers.md").read_text()
