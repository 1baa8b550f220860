"""Log lines cannot be forged: outside data with newlines or control characters stays on one line."""

from __future__ import annotations

import logging

from services.ops.redaction import install_log_sanitizer, one_line
from tests.conftest import UPSTREAM_KEY, post_json
from tests.server.test_server_process import ServerProcess, _env, _free_port

FORGED = "2026-01-01 00:00:00,000 ERROR iss_llm: FORGED admin login from 10.0.0.1"


async def test_an_upstream_error_message_with_a_newline_stays_on_one_log_line(io_loop, upstream, tmp_path):
    port = _free_port()
    server = ServerProcess(
        _env(tmp_path, LLM_BACKEND="openai", OPENAI_BASE_URL=upstream.base_url, OPENAI_API_KEY=UPSTREAM_KEY),
        "--port", str(port),
    )
    await server.start()
    try:
        await server.wait_for_line("listening on")
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "x_fake": {"fault": "status", "status": 500, "message": f"boom\n{FORGED}\r\x1b[2J"}}
        response = await post_json(f"http://127.0.0.1:{port}", body)
        assert response.code == 502
        await server.wait_for_line("FORGED")
    finally:
        assert await server.stop() == 0
    forged = [line for line in server.output if line.startswith("2026-01-01")]
    assert not forged, forged
    escaped = [line for line in server.output if "boom\\n2026-01-01" in line]
    assert escaped and all("\x1b" not in line for line in escaped)
    assert "\\x1b[2J" in escaped[0]


def test_the_sanitizer_holds_for_any_handler(caplog):
    install_log_sanitizer()
    with caplog.at_level(logging.INFO):
        logging.getLogger("iss_llm.test").warning("upstream said: %s", "a\nb\u2028c")
        logging.getLogger("iss_llm.test").warning("plain %d", 5)
    assert caplog.messages[-2] == "upstream said: a\\nb\\u2028c"
    assert caplog.messages[-1] == "plain 5"
    assert one_line("tab\there") == "tab\\there"
