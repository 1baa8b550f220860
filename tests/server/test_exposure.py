"""What the server shows and to whom: /healthz, the console's token, cookie and wrong guesses, and
which backend answers (and why)."""

from __future__ import annotations

import time

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from config import ConfigError, load_settings
from tests.conftest import UPSTREAM_KEY, post_json
from tests.fakes.openai_upstream import FakeUpstream
from tests.server.test_server_process import ServerProcess, _env, _free_port

TOKEN = "test-console-token"
MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


async def _get(base_url: str, path: str, **kwargs):
    return await AsyncHTTPClient().fetch(base_url + path, raise_error=False, follow_redirects=False,
                                         request_timeout=10, **kwargs)


@pytest.fixture
def overrides(upstream):
    return {"openai_base_url": f"http://operator:pa55word-in-url@127.0.0.1:{upstream.port}/v1?api-key=k-in-query"}


async def test_healthz_names_the_upstream_by_its_host_only(base_url, upstream):
    health = await _get(base_url, "/healthz")
    assert health.code == 200
    assert b"pa55word" not in health.body and b"k-in-query" not in health.body and b"operator" not in health.body
    backend = orjson.loads(health.body)["backend"]
    assert backend["host"] == f"127.0.0.1:{upstream.port}"
    assert backend["why"] == "LLM_BACKEND=openai"


@pytest.mark.parametrize("overrides", [{"server_api_key": "sk-server-key-0123456789"}])
async def test_with_a_key_set_healthz_details_need_the_key(base_url):
    public = orjson.loads((await _get(base_url, "/healthz")).body)
    assert public["status"] == "ok" and public["backend"]["backend"] == "openai"
    assert not {"iss", "chat", "connections", "asyncio_tasks"} & set(public)
    assert public["backend"] == {"backend": "openai"}  # not where the upstream lives, nor why
    wrong = orjson.loads((await _get(base_url, "/healthz", headers={"Authorization": "Bearer nope"})).body)
    assert "chat" not in wrong
    detailed = await _get(base_url, "/healthz", headers={"Authorization": "Bearer sk-server-key-0123456789"})
    assert {"iss", "chat", "connections", "asyncio_tasks"} <= set(orjson.loads(detailed.body))
    assert {"host", "why"} <= set(orjson.loads(detailed.body)["backend"])


def test_a_console_token_under_16_characters_is_a_configuration_error():
    with pytest.raises(ConfigError) as error:
        load_settings([], environ={"CONSOLE_TOKEN": "short-token"}, env_file=None)
    assert "CONSOLE_TOKEN" in str(error.value) and "16" in str(error.value)
    assert "short-token" not in str(error.value)
    assert load_settings([], environ={"CONSOLE_TOKEN": "x" * 16}, env_file=None).console_token == "x" * 16
    assert load_settings([], environ={"CONSOLE_TOKEN": ""}, env_file=None).console_token is None


async def test_wrong_console_tokens_are_throttled_per_address_and_the_right_one_still_gets_in(base_url, app):
    for _ in range(5):
        assert (await _get(base_url, "/console?token=guess-0123456789abcdef")).code == 403
    throttled = await _get(base_url, "/console?token=guess-0123456789abcdef")
    assert throttled.code == 429
    assert "Set-Cookie" not in throttled.headers
    assert int(throttled.headers["Retry-After"]) > 0
    # Issue 19, finding 9: the right token was refused too (429), so anyone's guesses locked the
    # operator out. It always opens the console.
    right = await _get(base_url, f"/console?token={TOKEN}")
    assert right.code == 303 and "Set-Cookie" in right.headers
    assert (await _get(base_url, "/console?token=guess-0123456789abcdef")).code == 429


async def test_the_console_cookie_expires(base_url, app, monkeypatch):
    response = await _get(base_url, f"/console?token={TOKEN}")
    assert response.code == 303
    header = response.headers["Set-Cookie"]
    assert "Max-Age=" in header
    cookie = header.split(";", 1)[0]
    assert (await _get(base_url, "/console", headers={"Cookie": cookie})).code == 200
    # The same cookie, a day later, opens nothing (whatever the browser kept).
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 24 * 3600)
    assert (await _get(base_url, "/console", headers={"Cookie": cookie})).code == 401


async def test_openai_base_url_alone_selects_a_keyless_upstream_and_the_start_line_says_why(io_loop, tmp_path):
    keyless = FakeUpstream(tokens=3)
    await keyless.start()
    port = _free_port()
    server = ServerProcess(_env(tmp_path, OPENAI_BASE_URL=keyless.base_url), "--port", str(port))
    await server.start()
    try:
        line = await server.wait_for_line("listening on")
        assert f"openai at 127.0.0.1:{keyless.port}" in line and "OPENAI_BASE_URL is set" in line
        response = await post_json(f"http://127.0.0.1:{port}", {"model": "llama3", "messages": MESSAGES})
        assert response.code == 200, response.body
        assert keyless.requests == 1
        assert orjson.loads(response.body)["choices"][0]["message"]["content"] == "The station is"
        health = orjson.loads((await _get(f"http://127.0.0.1:{port}", "/healthz")).body)
        assert health["backend"]["why"].startswith("OPENAI_BASE_URL is set")
    finally:
        assert await server.stop() == 0
        await keyless.close()
    server.assert_clean_output()


def test_without_key_or_base_url_the_builtin_answers_and_says_why():
    settings = load_settings([], environ={}, env_file=None)
    assert settings.backend_choice == (False, "neither OPENAI_API_KEY nor OPENAI_BASE_URL is set")
    keyed = load_settings([], environ={"OPENAI_API_KEY": UPSTREAM_KEY}, env_file=None)
    assert keyed.backend_choice == (True, "OPENAI_API_KEY is set")
