"""LOG_FORMAT=json from the real server process, parsed line by line; the formatters themselves."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from services.common import request_context
from services.ops import logs
from tests.conftest import ROOT, UPSTREAM_KEY, open_stream, post_json, sse_events
from tests.fakes.openai_upstream import FakeUpstream
from tests.redis_server import free_port as _free_port

SERVER_KEY = "server-key-json-logs-0123456789"
CONSOLE_TOKEN = "console-token-json-logs-0123456789"
MARKER = "tangerine-walrus-5521"  # in every message the callers send: no log line may hold it
AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}




@pytest.fixture
def upstream20(io_loop):
    fake = FakeUpstream(tokens=20, api_key=UPSTREAM_KEY)
    io_loop.run_sync(fake.start)
    yield fake
    io_loop.run_sync(fake.close)


async def _run_server(env: dict[str, str], port: int):
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "server.py"), "--port", str(port), cwd=str(ROOT), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process
        except OSError:
            if process.returncode is not None:
                break
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError(f"server did not listen: {(await process.stderr.read()).decode()[-2000:]}")


async def test_json_logs_are_one_object_a_line_with_one_outcome_each_and_no_secrets(upstream20, tmp_path):
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1",
        "LOG_FORMAT": "json", "LOG_LEVEL": "debug",
        "LLM_BACKEND": "openai", "OPENAI_BASE_URL": upstream20.base_url, "OPENAI_API_KEY": UPSTREAM_KEY,
        "SERVER_API_KEY": SERVER_KEY, "CONSOLE_TOKEN": CONSOLE_TOKEN,
        "ISS_SOURCES": "tle", "TLE_URL": "http://127.0.0.1:9/unreachable", "ISS_CACHE_DIR": str(tmp_path / "c"),
    }
    process = await _run_server(env, port)
    base = f"http://127.0.0.1:{port}"
    messages = [{"role": "system", "content": f"persona {MARKER}"}, {"role": "user", "content": f"hi {MARKER}"}]
    try:
        done = await post_json(base, {"model": "gpt-json", "stream": True, "messages": messages},
                               headers={**AUTH, "X-Request-Id": "trace-json-done", "conversation-id": "conv-json"})
        assert done.code == 200 and sse_events(done.body)[-1] == "[DONE]"
        _, writer, _ = await open_stream(base, {"model": "m", "stream": True, "messages": messages,
                                                "x_fake": {"tokens": 400, "gap": 0.05}},
                                         headers={**AUTH, "X-Request-Id": "trace-json-cancelled"}, events=3)
        writer.close()
        failed = await post_json(base, {"model": "m", "stream": True, "messages": messages,
                                        "x_fake": {"fault": "status", "status": 503, "echo_key": True}},
                                 headers={**AUTH, "X-Request-Id": "trace-json-error"})
        assert failed.code == 502
        refused = await post_json(base, {"model": "m", "messages": messages},
                                  headers={"Authorization": "Bearer wrong-key-9876543210", "X-Request-Id": "trace-401"})
        assert refused.code == 401
        whole = await post_json(base, {"model": "m", "messages": messages}, headers={**AUTH, "X-Request-Id": "w1"})
        assert whole.code == 200
        health = await AsyncHTTPClient().fetch(base + "/healthz")
        assert health.code == 200
        # The cancelled stream's outcome is recorded once the server notices the caller left: wait
        # for /healthz to count it (polled, at most 10 s), so its log line is in before SIGTERM.
        deadline = asyncio.get_running_loop().time() + 10
        while json.loads((await AsyncHTTPClient().fetch(base + "/healthz", headers=AUTH)).body)["chat"].get(
                "cancelled") != 1:
            assert asyncio.get_running_loop().time() < deadline, "the cancelled stream's outcome was never recorded"
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()[-3000:]
    # stdout holds the console URL (printed, never logged); every log line is on stderr.
    assert f"token={CONSOLE_TOKEN}" in stdout.decode()
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) >= 10
    records = []
    for line in lines:
        record = json.loads(line)  # one JSON object per line, or the test fails here
        assert isinstance(record, dict)
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["time"].endswith("Z") and record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR"}
        for secret in (MARKER, UPSTREAM_KEY, SERVER_KEY, CONSOLE_TOKEN, "wrong-key-9876543210", "flying over"):
            assert secret not in line, f"{secret!r} in a log line: {line}"
        records.append(record)

    outcomes = defaultdict(list)
    for record in records:
        if "outcome" in record:
            outcomes[record.get("request_id")].append(record)
    assert set(outcomes) == {"trace-json-done", "trace-json-cancelled", "trace-json-error", "trace-401", "w1"}
    assert all(len(lines_of) == 1 for lines_of in outcomes.values()), outcomes  # exactly one outcome line each

    [done_line] = outcomes["trace-json-done"]
    assert done_line["outcome"] == "done" and done_line["status"] == 200
    assert done_line["conversation_id"] == "conv-json" and done_line["route"] == "/v1/chat/completions"
    assert done_line["key_name"] == "default"  # SERVER_API_KEY's name: the key itself never (checked above)
    assert done_line["upstream_model"] == "gpt-json"
    assert 0 < done_line["ttft_ms"] <= done_line["total_ms"]
    assert done_line["upstream_ttft_ms"] <= done_line["ttft_ms"]
    [cancelled] = outcomes["trace-json-cancelled"]
    assert (cancelled["outcome"], cancelled["status"]) == ("cancelled", 499)
    [error] = outcomes["trace-json-error"]
    assert (error["outcome"], error["status"], error["code"]) == ("error", 502, "upstream_error")
    [refused_line] = outcomes["trace-401"]
    assert (refused_line["outcome"], refused_line["status"]) == ("error", 401)
    assert outcomes["w1"][0]["outcome"] == "done"

    # Every line of a request carries its id: whatever names the request in its text has the field too.
    for rid in outcomes:
        mine = [r for r in records if rid in r["message"]]
        assert mine and all(r.get("request_id") == rid for r in mine), mine
    # One line per chat request: no access line beside the outcome line, which carries its fields.
    assert not [r for r in records if r["logger"] == "tornado.access" and r.get("request_id") == "trace-json-done"]
    assert (done_line["method"], done_line["path"], done_line["remote_ip"]) == ("POST", "/v1/chat/completions",
                                                                               "127.0.0.1")
    assert done_line["duration_ms"] == done_line["total_ms"]
    # Lines outside any request (start-up, shutdown, the ISS refresh) carry no request id.
    assert any(r["message"].startswith("listening on") and "request_id" not in r for r in records)


def _record(message: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("iss_llm.test", logging.WARNING, __file__, 1, message, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_fields_redaction_and_exceptions():
    formatter = logs.JsonFormatter(secrets=("super-secret-value", 'quote"and\\slash-secret'))

    async def inside_a_request() -> str:
        context = request_context.begin("rid-1", "/v1/chat/completions")
        context.conversation_id = "conv-1"
        return formatter.format(_record("key super-secret-value and sk-abcdefghijklmnop", status=200,
                                        outcome="done", not_a_field="dropped",
                                        upstream_model='echo quote"and\\slash-secret'))

    line = asyncio.run(inside_a_request())
    record = orjson.loads(line)
    assert record["request_id"] == "rid-1" and record["conversation_id"] == "conv-1"
    assert record["route"] == "/v1/chat/completions"
    assert record["status"] == 200 and record["outcome"] == "done" and "not_a_field" not in record
    assert "super-secret-value" not in line and "sk-abcdefghijklmnop" not in line
    assert record["upstream_model"] == "echo ***"  # a secret JSON had to escape is found too
    try:
        raise ValueError("boom super-secret-value")
    except ValueError as exc:
        line = formatter.format(_record("failed", exc=exc))
    assert "\n" not in line
    record = orjson.loads(line)
    assert "request_id" not in record  # outside any request
    assert record["exc_type"] == "ValueError" and record["exception"].startswith("ValueError: boom ***")
    assert "super-secret-value" not in record["exception"] and "Traceback" not in line
    assert "tests/ops/test_logs.py:" in record["exception"] and "test_json_formatter_fields" in record["exception"]


def test_text_format_names_the_request_in_brackets():
    stream = io.StringIO()
    handler = logs.configure("text", "info", secrets=("hidden-key-123456",), stream=stream)
    try:
        async def log_one() -> None:
            request_context.begin("rid-text", "/chat/completions")
            logging.getLogger("iss_llm.test").info("hello hidden-key-123456")

        asyncio.run(log_one())
        logging.getLogger("iss_llm.test").info("outside")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO iss_llm.test [rid-text]: hello ***")
    assert second.endswith("INFO iss_llm.test: outside")


def test_log_format_is_checked_at_start(tmp_path: Path):
    from config import ConfigError, load_settings

    assert load_settings([], environ={"LOG_FORMAT": "JSON"}, env_file=None).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_settings([], environ={"LOG_FORMAT": "xml"}, env_file=None)
    with pytest.raises(ConfigError, match="METRICS_PUBLIC"):
        load_settings([], environ={"METRICS_PUBLIC": "false"}, env_file=None)


def _deep(depth: int, message: str) -> None:
    if depth:
        _deep(depth - 1, message)
    try:
        {}["missing"]
    except KeyError:
        raise RuntimeError(message)  # noqa: B904 (raised while handling the KeyError, on purpose)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_exception_is_one_bounded_redacted_line_with_its_innermost_frames(log_format):
    secret = "configured-upstream-key-0123456789"
    try:
        _deep(20, f"failed with {secret} and sk-keyshaped12345678 then\nTraceback (most recent call last):"
                  + "x" * 5000)
    except RuntimeError as exc:
        error = exc
    stream = io.StringIO()
    handler = logs.configure(log_format, "info", secrets=(secret,), stream=stream)
    try:
        logging.getLogger("iss_llm.test").error("request failed", exc_info=error)
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    text = orjson.loads(line)["exception"] if log_format == "json" else line.split(logs.EXCEPTION_MARK, 1)[1]
    assert logs.logged_exceptions(stream.getvalue() + "a line without one\n") == 1
    assert text.startswith("RuntimeError: failed with *** and *** then\\nTraceback")
    assert secret not in line and "sk-keyshaped" not in line
    assert "x" * (logs.MAX_EXCEPTION_MESSAGE + 1) not in line and len(line) < 2000  # bounded
    frames = text.split(" at ", 1)[1].split("; from ")[0].split(" > ")
    assert frames[0] == "…" and len(frames) == logs.MAX_FRAMES + 1  # the innermost MAX_FRAMES, innermost last
    assert frames[-1].startswith("tests/ops/test_logs.py:") and frames[-1].endswith(" in _deep")
    assert text.endswith("; from KeyError: 'missing'")  # what it was raised while handling


def test_a_secret_inside_a_longer_one_never_leaves_the_longer_ones_rest():
    from services.ops.redaction import redact_text

    assert redact_text("k=abcd1234xyz", ["abcd1234", "abcd1234xyz"]) == "k=***"
    assert redact_text("k=abcd1234xyz", ["abcd1234xyz", "abcd1234"]) == "k=***"


def test_upstream_header_values_and_the_base_urls_password_are_secrets():
    from config import load_settings

    settings = load_settings([], environ={"UPSTREAM_HEADERS": '{"api-key": "0123456789abcdef0123456789abcdef"}',
                                          "OPENAI_BASE_URL": "https://user:pa55w0rd-xyz@gw.example.com/v1"},
                             env_file=None)
    assert "0123456789abcdef0123456789abcdef" in settings.secrets
    assert "pa55w0rd-xyz" in settings.secrets
