"""`--workers 2`: whichever worker answers /metrics, the totals are the whole server's (multiprocess mode)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from tests.conftest import open_stream, post_json, sse_events
from tests.fakes.openai_upstream import FakeUpstream
from tests.ops.test_metrics import parse, value
from tests.ops.test_workers import _workers_env, serving, wait_until
from tests.server.test_server_process import MESSAGES, ServerProcess, _free_port

ROUTE = "/v1/chat/completions"


async def _scrape(base: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    """One scrape on a new connection (so the kernel hands it to either worker)."""
    client = AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(base + "/metrics", headers=headers)
    finally:
        client.close()


async def _scrapes(base: str, count: int) -> list[dict]:
    """`count` scrapes, each on a new connection, parsed."""
    return [parse((await _scrape(base)).body.decode())[0] for _ in range(count)]


async def _streamed_answers(base: str, count: int, headers: Callable[[int], dict[str, str]] | None = None) -> None:
    """`count` streamed answers, each on a new connection (so either worker may answer it)."""
    for index in range(count):
        response = await post_json(base, {"model": "m", "messages": MESSAGES, "stream": True,
                                          "x_fake": {"tokens": 3, "gap": 0}},
                                   headers=headers(index) if headers is not None else None)
        assert sse_events(response.body)[-1] == "[DONE]"


@contextlib.asynccontextmanager
async def _two_workers(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[tuple[ServerProcess, str]]:
    """A server with two workers, both serving; its base URL."""
    port = _free_port()
    server = ServerProcess(_workers_env(tmp_path, upstream), "--port", str(port), "--workers", "2")
    await server.start()
    try:
        await wait_until(lambda: len(serving(server)) == 2, 30, "two workers serving")
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.kill()


async def test_every_worker_reports_the_whole_servers_totals(io_loop, paced_upstream, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = ServerProcess(_workers_env(tmp_path, paced_upstream, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")),
                           "--port", str(port), "--workers", "2")
    await server.start()
    try:
        await wait_until(lambda: len(serving(server)) == 2, 30, "two workers serving")
        workers = serving(server)
        await _streamed_answers(base, 8)  # both workers answer some
        for samples in await _scrapes(base, 6):
            assert value(samples, "iss_llm_chat_requests_total", route=ROUTE, outcome="done", status="200") == 8
            assert value(samples, "iss_llm_answer_tokens_count", route=ROUTE) == 8
            assert value(samples, "iss_llm_chat_in_flight") == 0
            pids = {dict(labels)["pid"] for (name, labels) in samples if name == "process_cpu_seconds_total"}
            assert {str(pid) for pid in workers} <= pids  # each worker's own process figures
        # A worker killed mid-stream: its stream stops counting as in flight, its counts stay.
        _reader, writer, _ = await open_stream(base, {"model": "m", "messages": MESSAGES, "stream": True,
                                                      "x_fake": {"tokens": 400, "gap": 0.05}})
        local_port = writer.get_extra_info("sockname")[1]
        holder = next(pid for pid in workers for conn in psutil.Process(pid).net_connections(kind="tcp")
                      if conn.raddr and conn.raddr.port == local_port)
        for samples in await _scrapes(base, 3):
            assert value(samples, "iss_llm_chat_in_flight") == 1
        psutil.Process(holder).send_signal(signal.SIGKILL)
        await server.wait_for_line(f"(pid {holder}) died")
        writer.close()
        await wait_until(lambda: len(serving(server)) == 3, 30, "a replacement worker")
        for samples in await _scrapes(base, 4):
            assert value(samples, "iss_llm_chat_in_flight") == 0
            assert value(samples, "iss_llm_chat_requests_total", route=ROUTE, outcome="done", status="200") == 8
        assert await server.stop() == 0
    finally:
        server.kill()
    # The operator's PROMETHEUS_MULTIPROC_DIR is kept (emptied at the next start), holding only the client's files.
    assert {p.suffix for p in (tmp_path / "prom").iterdir()} == {".db"}


async def test_one_process_with_a_multiprocess_dir_starts_from_zero(io_loop, paced_upstream, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR set without workers: the directory is emptied at start, then used."""
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_4242.db").write_bytes(b"\0" * 16)  # an earlier run's counts
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = ServerProcess(_workers_env(tmp_path, paced_upstream, PROMETHEUS_MULTIPROC_DIR=str(directory)),
                           "--port", str(port))
    await server.start()
    try:
        await server.wait_for_line("listening on")
        response = await post_json(base, {"model": "m", "messages": MESSAGES, "stream": True,
                                          "x_fake": {"tokens": 3, "gap": 0}})
        assert sse_events(response.body)[-1] == "[DONE]"
        [samples] = await _scrapes(base, 1)
        assert value(samples, "iss_llm_chat_requests_total", route=ROUTE, outcome="done", status="200") == 1
        assert not (directory / "counter_4242.db").exists()
        assert await server.stop() == 0
        server.assert_clean_output()
    finally:
        server.kill()


async def test_workers_without_a_multiprocess_dir_share_a_temporary_one(io_loop, paced_upstream, tmp_path):
    """No PROMETHEUS_MULTIPROC_DIR: the parent makes one before the client is imported, so the
    workers still count together (a client imported first would leave each worker counting alone)."""
    async with _two_workers(tmp_path, paced_upstream) as (server, base):
        await _streamed_answers(base, 6)  # both workers answer some
        for samples in await _scrapes(base, 4):
            assert value(samples, "iss_llm_chat_requests_total", route=ROUTE, outcome="done", status="200") == 6
        assert await server.stop() == 0


async def test_with_workers_long_ids_are_counted_and_openmetrics_scrapes_without_exemplars(io_loop, paced_upstream,
                                                                                            tmp_path):
    """The client keeps no exemplars in its multiprocess mode: requests carrying the longest ids are
    all counted, and an OpenMetrics scrape answers the whole server's totals, with no exemplar."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    async with _two_workers(tmp_path, paced_upstream) as (server, base):
        await _streamed_answers(base, 6, lambda index: {"X-Request-Id": f"{index}" * 128,
                                                        "conversation-id": "c" * 128})
        for _ in range(4):
            response = await _scrape(base, {"Accept": "application/openmetrics-text; version=1.0.0"})
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            samples = [s for family in openmetrics_families(response.body.decode()) for s in family.samples]
            done = [s.value for s in samples if s.name == "iss_llm_chat_requests_total"
                    and s.labels == {"route": ROUTE, "outcome": "done", "status": "200"}]
            assert done == [6]
            assert [s.value for s in samples if s.name == "iss_llm_chat_ttft_seconds_count"] == [6]
            assert [s for s in samples if s.exemplar is not None] == []
        assert await server.stop() == 0
        assert "metrics not recorded" not in "".join(server.output)
        server.assert_clean_output()
