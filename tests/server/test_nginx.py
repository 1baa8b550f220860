"""The deployment page's nginx recipe (deploy/nginx.conf) in front of two workers, against a real nginx:
tokens pass one by one, the console's WebSocket connects, and a refused origin says why in the log."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import ROOT, UPSTREAM_KEY
from tests.nginx_server import NGINX, RECIPE, NginxServer, recipe_for
from tests.ops.test_workers import serving, wait_until
from tests.server.test_server_process import MESSAGES, ServerProcess, _env, _free_port

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and not Path(NGINX).exists(),
                                reason="nginx is installed by .ci/run")
TOKEN = "process-console-token"



def test_the_deployment_page_shows_the_recipe_the_test_runs():
    page = (ROOT / "docs" / "deployment.md").read_text()
    assert RECIPE.read_text().strip() in page


async def test_streams_and_the_console_pass_through_the_nginx_recipe(io_loop, paced_upstream, tmp_path):
    server = ServerProcess(
        _env(tmp_path, LLM_BACKEND="openai", OPENAI_BASE_URL=paced_upstream.base_url, OPENAI_API_KEY=UPSTREAM_KEY,
             TRUST_PROXY_HEADERS="true"),
        "--port", "0", "--workers", "2",
    )
    nginx = None
    await server.start()
    try:
        app_port = await server.listening_port()
        await wait_until(lambda: len(serving(server)) == 2, 60, "two workers serving")
        proxy_port = _free_port()  # picked just before nginx binds it
        nginx = NginxServer(tmp_path / "nginx", recipe_for(proxy_port, [app_port]))
        nginx.start(proxy_port)
        base = f"http://127.0.0.1:{proxy_port}"

        # Token by token: the upstream holds its fourth chunk back; what came through nginx by then
        # was passed on as it came, not buffered until the end.
        paced_upstream.hold_at = 3
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        payload = orjson.dumps({"model": "m", "stream": True, "messages": MESSAGES})
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{proxy_port}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
        seen = b""
        while seen.count(b'"content"') < 3:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            assert chunk, seen
            seen += chunk
        assert paced_upstream.open_streams == 1 and not paced_upstream.release.is_set()
        paced_upstream.release.set()
        while b"data: [DONE]" not in seen:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            assert chunk, seen
            seen += chunk
        writer.close()

        # The console: the token's cookie through nginx, then its WebSocket, with the page's Origin.
        client = AsyncHTTPClient(force_instance=True)
        response = await client.fetch(f"{base}/console?token={TOKEN}", follow_redirects=False, raise_error=False)
        assert response.code == 303
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        page = await client.fetch(f"{base}/console", headers={"Cookie": cookie})
        assert f"ws://127.0.0.1:{proxy_port}" in page.headers["Content-Security-Policy"]
        ws = await websocket_connect(HTTPRequest(
            f"ws://127.0.0.1:{proxy_port}/console/ws",
            headers={"Cookie": cookie, "Origin": base}, request_timeout=30))
        hello = orjson.loads(await asyncio.wait_for(ws.read_message(), 30))
        assert hello["type"] == "hello"
        # The streamed request is in the replay (on whichever worker it ran: one process each here,
        # so only when it ran on this one), and the caller is the client nginx saw, not nginx.
        for record in hello["requests"]:
            assert record["remote_ip"] == "127.0.0.1"
        ws.close()

        # A page on another site is refused, and the server's log says why.
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(
                f"ws://127.0.0.1:{proxy_port}/console/ws",
                headers={"Cookie": cookie, "Origin": "http://evil.example"}, request_timeout=30))
        assert refused.value.code == 403
        line = await server.wait_for_line("console socket refused", 30)
        assert "evil.example" in line and f"127.0.0.1:{proxy_port}" in line
        client.close()
        assert await server.stop() == 0
        server.assert_clean_output()
        assert "[error]" not in nginx.error_log, nginx.error_log[-2000:]
    finally:
        if nginx is not None:
            nginx.stop()
        server.kill()


async def test_a_proxy_that_rewrites_host_gets_the_console_refused_with_the_reason(io_loop, tmp_path):
    # The old advice: no Host header set, so nginx sends the upstream's address. The socket is
    # refused, and the log line names both sides and the fix.
    server = ServerProcess(_env(tmp_path), "--port", "0")
    nginx = None
    await server.start()
    try:
        app_port = await server.listening_port()
        proxy_port = _free_port()  # picked just before nginx binds it
        site = recipe_for(proxy_port, [app_port]).replace("proxy_set_header Host $http_host;", "")
        nginx = NginxServer(tmp_path / "nginx", site)
        nginx.start(proxy_port)
        base = f"http://127.0.0.1:{proxy_port}"
        client = AsyncHTTPClient(force_instance=True)
        response = await client.fetch(f"{base}/console?token={TOKEN}", follow_redirects=False, raise_error=False)
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        client.close()
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{proxy_port}/console/ws",
                                                headers={"Cookie": cookie, "Origin": base}, request_timeout=30))
        assert refused.value.code == 403
        line = await server.wait_for_line("console socket refused", 30)
        assert re.search(rf"Origin '[^']*:{proxy_port}'.*Host 'iss_llm'", line), line
        assert "proxy_set_header Host $http_host" in line
        assert await server.stop() == 0
    finally:
        if nginx is not None:
            nginx.stop()
        server.kill()
