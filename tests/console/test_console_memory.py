"""The console's replay is bounded in bytes: a real server process, a fake upstream streaming 65,600
one-character tokens a request, the default buffer (100 requests); the process's RSS (psutil) stays
within 50 MB of what it was idle, and the replay still shows every record, cut and marked (issue 19,
finding 7: 90 → 552 MB before, one object kept per token, ~4.6 MB a request).

A request of 65,600 tokens takes the server about 2 s of CPU (each token is relayed and flushed on
its own), so the suite runs LONG_REQUESTS of them and checks what each kept record costs once the
first few have grown the allocator's pools: that cost times the buffer's 100, on top of the growth
so far, must stay within the bound too. CONSOLE_MEMORY_TEST_REQUESTS=100 runs the whole buffer
(about 4 minutes on an idle machine) and checks the bound as measured.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import orjson
import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from services.console.replay import RECORD_BYTES, cut_marker
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_upstream import FakeUpstream
from tests.server.test_server_process import MESSAGES, ServerProcess, _env

TOKENS = 65_600
LONG_REQUESTS = int(os.environ.get("CONSOLE_MEMORY_TEST_REQUESTS", "12"))
BUFFER = 100  # CONSOLE_BUFFER's default
WARM = 4  # long requests after which the allocator's pools have grown: later ones cost what they keep
BOUND = 50 * 1024 * 1024
TOKEN = "process-console-token"


async def _chat(session: aiohttp.ClientSession, base: str, tokens: int) -> int:
    """One streamed request; the number of content characters the caller got."""
    body = {"model": "m", "stream": True, "messages": MESSAGES, "x_fake": {"fault": "token_flood", "bytes": tokens}}
    got = 0
    async with session.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: {"):
                chunk = orjson.loads(line[6:])
                got += len((chunk["choices"] or [{}])[0].get("delta", {}).get("content") or "")
    return got


async def _replay(base: str) -> list[dict]:
    client = AsyncHTTPClient(force_instance=True)
    response = await client.fetch(f"{base}/console?token={TOKEN}", follow_redirects=False, raise_error=False)
    client.close()
    assert response.code == 303
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    ws = await websocket_connect(HTTPRequest(base.replace("http://", "ws://") + "/console/ws",
                                             headers={"Cookie": cookie}, request_timeout=10),
                                 max_message_size=256 * 1024 * 1024)
    try:
        hello = orjson.loads(await asyncio.wait_for(ws.read_message(), 30))
    finally:
        ws.close()
    assert hello["type"] == "hello"
    return hello["requests"]


@pytest.mark.timeout(seconds=1800)
async def test_a_full_buffer_of_long_answers_keeps_rss_within_50_mb_of_idle(io_loop, tmp_path):
    upstream = FakeUpstream(api_key=UPSTREAM_KEY)
    await upstream.start()
    server = ServerProcess(
        _env(tmp_path, LLM_BACKEND="openai", OPENAI_BASE_URL=upstream.base_url, OPENAI_API_KEY=UPSTREAM_KEY,
             UPSTREAM_TIMEOUT="300", MAX_STREAM_SECONDS="600"),
        "--port", "0",
    )
    await server.start()
    try:
        base = f"http://127.0.0.1:{await server.listening_port()}"
        process = psutil.Process(server.process.pid)
        rss: list[int] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            assert await _chat(session, base, 100) == 100  # every code path has run once: this is idle
            idle = process.memory_info().rss
            for _ in range(LONG_REQUESTS):
                assert await _chat(session, base, TOKENS) == TOKENS
                rss.append(process.memory_info().rss)
        grown = (rss[-1] - idle) / 2**20
        per_record = (rss[-1] - rss[WARM - 1]) / (LONG_REQUESTS - WARM) / 2**20
        full = grown + per_record * (BUFFER - min(BUFFER, LONG_REQUESTS))
        print(f"RSS idle {idle / 2**20:.0f} MB; after {LONG_REQUESTS} requests of {TOKENS} tokens +{grown:.1f} MB, "
              f"{per_record * 1024:.0f} KB a request past the first {WARM}; a full buffer: +{full:.1f} MB")
        assert max(rss) - idle <= BOUND, f"RSS grew by {(max(rss) - idle) / 2**20:.0f} MB"
        assert full * 2**20 <= BOUND, f"a full buffer would take RSS {full:.0f} MB above idle"

        # The replay: every request kept (up to the buffer's 100), each answer cut at the bound and marked.
        records = await _replay(base)
        assert len(records) == min(BUFFER, LONG_REQUESTS + 1)
        long = records[-min(BUFFER, LONG_REQUESTS):]
        for record in long:
            assert record["text"] == "x" * RECORD_BYTES + cut_marker(TOKENS - RECORD_BYTES), record["text"][-80:]
            assert record["text_truncated"] is True and record["status"] == "done"
        assert await server.stop() == 0
        server.assert_clean_output()
    finally:
        server.kill()
        await upstream.close()
