"""EVENT_LOOP: uvloop where it is installed (auto), asyncio's own loop on request, a clear error otherwise."""

from __future__ import annotations

import sys

import openai
import pytest

from config import ConfigError
from server import loop_factory
from tests.server.test_server_process import MESSAGES, ServerProcess, _env


def test_auto_takes_uvloop_when_installed_and_asyncio_takes_the_standard_loop():
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_factory("auto") is None
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_factory("uvloop")


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
async def test_the_server_answers_on_the_loop_it_names(io_loop, tmp_path, choice):
    pytest.importorskip("uvloop")
    server = ServerProcess(_env(tmp_path, EVENT_LOOP=choice), "--port", "0")
    await server.start()
    try:
        port = await server.listening_port()
        assert f"event loop: {choice}" in await server.wait_for_line("listening on")
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        completion = await client.chat.completions.create(model="m", messages=MESSAGES)
        await client.close()
        assert completion.choices[0].message.content
        assert await server.stop() == 0
        server.assert_clean_output()
    finally:
        server.kill()
