"""CORS: a web page on another origin (ALLOWED_ORIGINS) calls the chat and model routes with the key.

Two loopback servers are two origins: the page is served on one port, the API listens on another.
The preflight is checked with a plain HTTP client, the whole exchange in Chromium.
"""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

from config import ConfigError, load_settings
from tests.conftest import error_of, post_json
from tests.console.test_console_browser import ARGS, CHROMIUM, WAIT_MS
from tests.fakes.openai_upstream import WORDS

KEY = "sk-server-key-for-pages-0123456789"
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Where is the ISS?"}]}

PAGE = """<!doctype html><meta charset="utf-8"><title>another site</title><pre id="out"></pre>
<script>
window.chat = async (api, key) => {
  const response = await fetch(api + "/v1/chat/completions", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json", "conversation-id": "page-conv"},
    body: JSON.stringify({model: "m", stream: true, messages: [{role: "user", content: "Where is the ISS?"}]}),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let raw = "", text = "", events = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    raw += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = raw.indexOf("\\n\\n")) >= 0) {
      const line = raw.slice(0, cut); raw = raw.slice(cut + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      events += 1;
      for (const choice of JSON.parse(line.slice(6)).choices) text += choice.delta.content || "";
      document.getElementById("out").textContent = text;
    }
  }
  return {status: response.status, text, events, requestId: response.headers.get("X-Request-Id")};
};
window.models = async (api, key) => {
  const response = await fetch(api + "/v1/models", {headers: {"Authorization": "Bearer " + key}});
  return (await response.json()).data.map((m) => m.id);
};
</script>"""


class PageHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PAGE)


@pytest.fixture
def page_server(io_loop):
    """The other site: a loopback server of its own, on its own port, serving the page."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server = HTTPServer(tornado.web.Application([(r"/", PageHandler)]))
    server.add_socket(sock)
    yield sock.getsockname()[1]
    server.stop()


@pytest.fixture
def overrides(page_server) -> dict:
    return {"server_api_key": KEY, "allowed_origins": (f"http://127.0.0.1:{page_server}",)}


async def preflight(base_url: str, origin: str, path: str = "/v1/chat/completions", method: str = "POST"):
    return await AsyncHTTPClient().fetch(
        base_url + path, method="OPTIONS", raise_error=False,
        headers={"Origin": origin, "Access-Control-Request-Method": method,
                 "Access-Control-Request-Headers": "authorization,content-type,conversation-id"},
    )


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
async def test_the_preflight_of_a_listed_origin_is_answered(base_url, page_server, upstream, path):
    origin = f"http://127.0.0.1:{page_server}"
    response = await preflight(base_url, origin, path)
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = {name.strip().lower() for name in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "conversation-id"} <= allowed
    assert response.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert upstream.requests == 0


async def test_the_models_preflight_allows_get(base_url, page_server):
    response = await preflight(base_url, f"http://127.0.0.1:{page_server}", "/v1/models", "GET")
    assert response.code == 204 and "GET" in response.headers["Access-Control-Allow-Methods"]


async def test_another_origin_gets_no_cors_headers(base_url, page_server):
    response = await preflight(base_url, "https://evil.example")
    assert response.code == 403
    assert "ALLOWED_ORIGINS" in error_of(response)["message"]
    assert "Access-Control-Allow-Origin" not in response.headers
    answer = await post_json(base_url, BODY, headers={"Origin": "https://evil.example",
                                                      "Authorization": f"Bearer {KEY}"})
    assert "Access-Control-Allow-Origin" not in answer.headers and answer.headers["Vary"] == "Origin"


async def test_answers_and_errors_name_the_listed_origin_never_a_wildcard(base_url, page_server):
    origin = f"http://127.0.0.1:{page_server}"
    answer = await post_json(base_url, BODY, headers={"Origin": origin, "Authorization": f"Bearer {KEY}"})
    assert answer.code == 200 and answer.headers["Access-Control-Allow-Origin"] == origin
    refused = await post_json(base_url, BODY, headers={"Origin": origin})  # no key: 401, readable by the page
    assert refused.code == 401 and refused.headers["Access-Control-Allow-Origin"] == origin


def test_a_wildcard_or_origins_without_a_key_are_refused_at_start():
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        load_settings([], environ={"ALLOWED_ORIGINS": "*", "SERVER_API_KEY": KEY}, env_file=None)
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        load_settings([], environ={"ALLOWED_ORIGINS": "https://app.example/path", "SERVER_API_KEY": KEY},
                      env_file=None)
    with pytest.raises(ConfigError, match="needs SERVER_API_KEY"):
        load_settings([], environ={"ALLOWED_ORIGINS": "https://app.example"}, env_file=None)
    settings = load_settings([], environ={"ALLOWED_ORIGINS": "https://App.example:8443/, http://localhost:3000",
                                          "SERVER_API_KEY": KEY}, env_file=None)
    assert settings.allowed_origins == ("https://app.example:8443", "http://localhost:3000")


@pytest.mark.parametrize("overrides", [{}])
async def test_a_keyless_servers_403_names_what_works(base_url, overrides):
    response = await post_json(base_url, BODY, headers={"Origin": "http://127.0.0.1:1"})
    assert response.code == 403
    message = error_of(response)["message"]
    assert "SERVER_API_KEY" in message and "ALLOWED_ORIGINS" in message


async def test_a_page_on_another_origin_streams_an_answer_with_the_key_in_chromium(
    http_server, base_url, page_server, app
):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # installed but broken is a failure, never a skip
            pytest.fail(f"Chromium ({CHROMIUM}) is installed but did not start: {str(exc)[:1500]}")
        try:
            page = await browser.new_page()
            page.set_default_timeout(WAIT_MS)
            await page.goto(f"http://127.0.0.1:{page_server}/")
            result = await page.evaluate("([api, key]) => window.chat(api, key)", [base_url, KEY])
            assert result["status"] == 200
            assert result["text"] == "".join(WORDS[i % len(WORDS)] for i in range(5))
            assert result["requestId"], "X-Request-Id is exposed to the page"
            assert await page.evaluate("([api, key]) => window.models(api, key)", [base_url, KEY])
            app.services.hub.flush()
            assert app.services.hub.snapshot()[-1]["conversation_id"] == "page-conv"

            # The same page from an origin not listed (localhost is another origin than 127.0.0.1):
            # the browser blocks it.
            await page.goto(f"http://localhost:{page_server}/")
            error = await page.evaluate(
                "([api, key]) => window.chat(api, key).then(() => 'read', (e) => String(e))", [base_url, KEY])
            assert "Failed to fetch" in error
        finally:
            await browser.close()


async def test_the_page_streams_as_it_arrives(http_server, base_url, page_server, upstream):
    """Tokens reach the page one by one while the stream is open, not at its end."""
    from playwright.async_api import async_playwright

    upstream.tokens, upstream.gap = 40, 0.05
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(WAIT_MS)
            await page.goto(f"http://127.0.0.1:{page_server}/")
            done = asyncio.ensure_future(page.evaluate("([api, key]) => window.chat(api, key)", [base_url, KEY]))
            await page.wait_for_function("document.getElementById('out').textContent.length > 0")
            assert not done.done() and upstream.open_streams == 1, "text shows while the stream is open"
            assert orjson.loads(orjson.dumps(await done))["events"] >= 40
        finally:
            await browser.close()
