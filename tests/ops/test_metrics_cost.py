"""The metrics-cost benchmark's parts: requests shared evenly, time to the first *content* token, the report.
Figures come from `python -m bench.metrics_cost`, never from a test."""

from __future__ import annotations

import orjson

from bench.loadgen import chat_body
from bench.metrics_cost import Config, Variant, markdown, micro_figures, round_robin, summarize
from tests.fakes.openai_upstream import FakeUpstream


async def test_every_server_gets_its_share_and_ttft_waits_for_content(io_loop):
    # The role chunk comes at once, the first content token 0.2 s later: the TTFT is the latter.
    fakes = [await FakeUpstream(tokens=3, gap=0.0).start() for _ in range(2)]
    try:
        urls = {f"s{index}": fake.base_url + "/chat/completions" for index, fake in enumerate(fakes)}
        body = orjson.dumps({**orjson.loads(chat_body(3, 0.0, 0.0)), "x_fake": {"tokens": 3, "pause_after_role": 0.2}})
        ttfts, failures = await round_robin(urls, body, callers=2, per_server=3)
        assert failures == {"s0": 0, "s1": 0}
        assert {name: len(values) for name, values in ttfts.items()} == {"s0": 3, "s1": 3}
        assert all(0.2 <= value < 5 for values in ttfts.values() for value in values)
        assert [fake.requests for fake in fakes] == [3, 3]
        failing = orjson.dumps({**orjson.loads(body), "x_fake": {"fault": "status", "status": 503}})
        ttfts, failures = await round_robin(urls, failing, callers=1, per_server=1)
        assert failures == {"s0": 1, "s1": 1} and ttfts == {"s0": [], "s1": []}
    finally:
        for fake in fakes:
            await fake.close()


def test_the_report_compares_each_server_with_off():
    variants = {name: Variant(name) for name in ("off", "metrics", "metrics+json")}
    for shift, variant in zip((0.0, 0.001, 0.002), variants.values(), strict=True):
        variant.ttft = [0.02 + shift] * 5
        variant.round_medians = [0.02 + shift]
        variant.cpu_s, variant.answered = 1.0 + shift * 10, 100
        variant.round_cpu = [10.0]
    result = summarize(Config(rounds=1), variants, {"metrics_per_request_us": 12.0, "json_line_us": 30.0,
                                                    "text_line_us": 25.0})
    rows = {row["variant"]: row for row in result["rows"]}
    assert round(rows["metrics+json"]["added_ttft_p50_ms"], 6) == 2.0
    assert round(rows["metrics"]["cpu_vs_off_pct"], 6) == 1.0
    text = markdown(result)
    assert "| metrics+json |" in text and "+2.000 ms" in text and "12.0 µs" in text


def test_the_in_process_figures_are_measured():
    figures = micro_figures(200)
    assert set(figures) == {"metrics_per_request_us", "json_line_us", "text_line_us"}
    assert all(0 < value < 10_000 for value in figures.values())


def test_with_tracing_the_report_has_the_traced_server_and_the_spans_it_exported():
    variants = {name: Variant(name) for name in ("off", "metrics", "metrics+json", "metrics+traces")}
    for variant in variants.values():
        variant.ttft, variant.round_medians, variant.round_cpu = [0.02] * 3, [0.02], [10.0]
        variant.cpu_s, variant.answered = 1.0, 100
    variants["metrics+traces"].spans = 412
    result = summarize(Config(rounds=1, tracing=True), variants,
                       {"metrics_per_request_us": 12.0, "json_line_us": 30.0, "text_line_us": 25.0})
    traced = next(row for row in result["rows"] if row["variant"] == "metrics+traces")
    assert traced["env"]["OTEL_EXPORTER_OTLP_ENDPOINT"] and traced["spans"] == 412
    assert "| metrics+traces |" in markdown(result) and "412 spans reached" in markdown(result)


async def test_the_collectors_stand_in_decodes_and_counts_the_spans_it_takes(io_loop):
    import asyncio
    import sys

    import aiohttp
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.conftest import ROOT

    sink = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.otlp_sink", "--port", "0", cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert sink.stdout is not None
        url = (await asyncio.wait_for(sink.stdout.readline(), 30)).decode().strip()
        message = ExportTraceServiceRequest()
        scope = message.resource_spans.add().scope_spans.add()
        for name in ("chat", "upstream round"):
            scope.spans.add().name = name
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/traces", data=message.SerializeToString(),
                                    headers={"Content-Type": "application/x-protobuf"}) as response:
                assert response.status == 200
            async with session.get(url + "/stats") as response:
                assert await response.json() == {"posts": 1, "spans": 2}
    finally:
        sink.terminate()
        await sink.wait()
