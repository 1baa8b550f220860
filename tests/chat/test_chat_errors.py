"""Every error a caller can cause or meet: the OpenAI error object, the right status, no secrets."""

from __future__ import annotations

import asyncio
import logging

import openai
import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.conftest import UPSTREAM_KEY, error_of, post_json, sse_events

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'{"model": "m"}', "messages"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": [42]}', "messages[0]"),
        (b'{"messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": [{"text": "no type"}]}]}', "messages[0].content[0]"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": 5}', "model"),
        (b'\xff\xfe{"messages": []}', None),
    ],
)
async def test_bad_requests_are_400(base_url, upstream, raw, param):
    response = await post_json(base_url, None, raw=raw)
    assert response.code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert upstream.requests == 0


@pytest.mark.parametrize("overrides", [{"max_body_bytes": 2048}])
async def test_body_over_the_limit_is_413(overrides, base_url, upstream):
    big = orjson.dumps({"messages": [{"role": "user", "content": "x" * 4096}]})
    response = await post_json(base_url, None, raw=big)
    assert response.code == 413
    assert error_of(response)["code"] == "request_too_large"

    # Without a Content-Length (chunked upload) the limit holds all the same.
    def body_producer(write):
        async def produce():
            for start in range(0, len(big), 512):
                await write(big[start:start + 512])
        return produce()

    request = HTTPRequest(base_url + "/v1/chat/completions", method="POST", body_producer=body_producer,
                          headers={"Content-Type": "application/json"}, request_timeout=10)
    chunked = await AsyncHTTPClient().fetch(request, raise_error=False)
    assert chunked.code == 413
    assert error_of(chunked)["code"] == "request_too_large"
    assert upstream.requests == 0


@pytest.mark.parametrize("overrides", [{"server_api_key": "server-secret-key"}])
@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
     ({"Authorization": "Basic server-secret-key"}, "missing_api_key")],
)
async def test_missing_or_wrong_key_is_401(overrides, base_url, upstream, headers, code):
    for path in ("/v1/chat/completions", "/chat/completions"):
        response = await post_json(base_url, {"messages": MESSAGES}, path=path, headers=headers)
        assert response.code == 401
        assert error_of(response)["code"] == code
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    models = await post_json(base_url, None, path="/v1/models", method="GET", headers=headers)
    assert models.code == 401
    assert upstream.requests == 0


@pytest.mark.parametrize("overrides", [{"server_api_key": "server-secret-key"}])
async def test_right_key_is_accepted(overrides, base_url):
    api = openai.AsyncOpenAI(api_key="server-secret-key", base_url=base_url + "/v1", max_retries=0)
    try:
        completion = await api.chat.completions.create(model="m", messages=MESSAGES)
    finally:
        await api.close()
    assert completion.choices[0].message.content


async def test_wrong_method_is_405_and_unknown_path_404(base_url):
    response = await post_json(base_url, None, method="GET")
    assert response.code == 405
    assert "GET" in error_of(response)["message"]
    missing = await post_json(base_url, {"messages": MESSAGES}, path="/v2/chat/completions")
    assert missing.code == 404
    assert error_of(missing)["code"] == "unknown_url"


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"fault": "status", "status": 429, "message": "slow down"}, 429, "upstream_rate_limited"),
        ({"fault": "status", "status": 500, "message": "kaboom"}, 502, "upstream_error"),
        ({"fault": "status", "status": 503, "message": "overloaded"}, 502, "upstream_error"),
        ({"fault": "status", "status": 400, "message": "temperature too high"}, 400, "upstream_rejected"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_status_before_first_token(base_url, fault, status, code, stream):
    response = await post_json(base_url, {"messages": MESSAGES, "stream": stream, "x_fake": fault})
    assert response.code == status
    error = error_of(response)
    assert error["code"] == code
    assert fault["message"] in error["message"]
    assert UPSTREAM_KEY not in response.body.decode()
    assert response.headers["X-Request-Id"].startswith("req_")


async def test_upstream_unreachable_is_502(base_url, upstream):
    await upstream.close()
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True})
    assert response.code == 502
    assert error_of(response)["code"] == "upstream_unreachable"


@pytest.mark.parametrize("overrides", [{"upstream_timeout": 0.3}])
async def test_upstream_timeout_is_504(overrides, base_url):
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"fault": "stall"}})
    assert response.code == 504
    assert error_of(response)["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"fault": "drop", "after": 2}, "upstream_dropped"),
        ({"fault": "malformed", "after": 2}, "upstream_bad_chunk"),
        ({"fault": "misshapen", "after": 2}, "upstream_bad_chunk"),
        ({"fault": "error_event", "after": 2}, "upstream_error"),
    ],
)
async def test_failure_after_first_token_is_an_sse_error_event(base_url, client, fault, code):
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True, "x_fake": fault})
    assert response.code == 200
    events = sse_events(response.body)
    assert events[-1] == "[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert orjson.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    # The openai client turns that event into an APIError after the tokens it got.
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"x_fake": fault}
    )
    received = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            received.append(chunk)
    assert received


@pytest.mark.parametrize("overrides", [{"fallback_reply": "Sorry, give me a second."}])
@pytest.mark.parametrize("stream", [True, False])
async def test_fallback_reply_turns_an_upstream_failure_into_an_answer(overrides, base_url, client, caplog, stream):
    caplog.set_level(logging.WARNING, logger="iss_llm")
    fault = {"fault": "status", "status": 500}
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_body={"x_fake": fault})]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        completion = await client.chat.completions.create(model="m", messages=MESSAGES, extra_body={"x_fake": fault})
        text = completion.choices[0].message.content
        # A whole answer always carries usage (OpenAI's shape; clients read it): none was spent upstream.
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
                completion.usage.total_tokens) == (0, 0, 0)
    assert text == "Sorry, give me a second."
    assert any("fallback" in r.getMessage() and "error" in r.getMessage() for r in caplog.records)
    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    # Counted as its own outcome: the caller got an answer, the upstream still failed.
    assert health["chat"]["fallback"] == 1 and health["chat"]["error"] == 0


async def test_upstream_errors_reach_caller_and_log_without_traceback_or_key(base_url, caplog):
    # What the upstream sends (an error repeating the key, a malformed chunk); a bug inside this
    # server is tests/chat/test_internal_errors.py.
    caplog.set_level(logging.DEBUG)
    echoed = {"fault": "status", "status": 500, "echo_key": True}  # a 5xx: its text reaches the caller
    for stream in (True, False):
        response = await post_json(base_url, {"messages": MESSAGES, "stream": stream, "x_fake": echoed})
        text = response.body.decode()
        assert response.code == 502
        assert "you sent Bearer ***" in error_of(response)["message"]
        assert "Traceback" not in text and UPSTREAM_KEY not in text
    malformed = await post_json(base_url, {"messages": MESSAGES, "stream": True,
                                           "x_fake": {"fault": "malformed", "after": 1}})
    assert "Traceback" not in malformed.body.decode()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert UPSTREAM_KEY not in logged
    assert "Traceback" not in logged


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 9 * 1024 * 1024])
async def test_big_bodies_get_a_413_not_a_reset(base_url, client, upstream, size):
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * size}])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"
    assert upstream.requests == 0


async def test_big_body_from_curl_is_refused_before_it_is_sent(base_url, tmp_path):
    body = tmp_path / "body.json"
    body.write_bytes(orjson.dumps({"messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]}))
    curl = await asyncio.create_subprocess_exec(
        "curl", "-s", "--max-time", "20", "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
        "-w", "\n%{http_code}", f"{base_url}/v1/chat/completions", stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(curl.communicate(), 30)
    payload, _, status = out.rpartition(b"\n")
    assert status == b"413"
    assert orjson.loads(payload)["error"]["code"] == "request_too_large"


async def test_abandoned_uploads_leave_nothing_behind(base_url, app):
    async def health() -> dict:
        return orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)

    baseline = (await health())["asyncio_tasks"]
    host, port = base_url.removeprefix("http://").split(":")
    for _ in range(10):
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 900000\r\n\r\n"
                     + b"{" * 100_000)
        await writer.drain()
        writer.close()
    for _ in range(100):  # up to about 5 s for the closed connections to be noticed
        if (await health())["asyncio_tasks"] <= baseline:
            break
        await asyncio.sleep(0.05)
    assert (await health())["asyncio_tasks"] <= baseline
    assert app.services.inflight.count == 0


async def test_empty_upstream_stream_is_502(base_url):
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"fault": "empty"}})
    assert response.code == 502
    assert error_of(response)["code"] == "upstream_empty"


async def test_non_stream_answer_that_is_no_completion_is_502(base_url, caplog):
    response = await post_json(base_url, {"messages": MESSAGES, "x_fake": {"fault": "odd_completion"}})
    assert response.code == 502
    assert error_of(response)["code"] == "upstream_bad_response"
    assert not [r for r in caplog.records if r.exc_info], "a shape problem upstream is not a crash here"


FALLBACK = "Sorry, give me a second."


@pytest.mark.parametrize("overrides", [{"fallback_reply": FALLBACK}])
@pytest.mark.parametrize("upstream_status", [400, 422])
@pytest.mark.parametrize("stream", [True, False])
async def test_with_a_fallback_reply_the_callers_own_fault_still_reaches_the_caller(
    overrides, base_url, client, upstream_status, stream
):
    # The upstream refused the caller's own parameters: a fallback reply would hide what to fix.
    fault = {"fault": "status", "status": upstream_status, "message": "temperature must be at most 2"}
    response = await post_json(base_url, {"messages": MESSAGES, "stream": stream, "x_fake": fault})
    assert response.code == 400
    error = error_of(response)
    assert error["code"] == "upstream_rejected" and error["type"] == "invalid_request_error"
    assert "temperature must be at most 2" in error["message"]
    assert FALLBACK not in response.body.decode()
    # The official client sees it as the 400 it is.
    with pytest.raises(openai.BadRequestError):
        if stream:
            async for _ in await client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                                extra_body={"x_fake": fault}):
                pass
        else:
            await client.chat.completions.create(model="m", messages=MESSAGES, extra_body={"x_fake": fault})
    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    assert health["chat"]["error"] == 2 and health["chat"]["fallback"] == 0  # one outcome each, recorded once


@pytest.mark.parametrize("overrides", [{"fallback_reply": FALLBACK, "upstream_timeout": 0.5}])
@pytest.mark.parametrize("stream", [True, False])
async def test_with_a_fallback_reply_failures_that_are_not_the_callers_keep_the_fallback(
    overrides, base_url, upstream, stream
):
    faults = [{"fault": "status", "status": status} for status in (401, 403, 404, 429, 500, 503)]
    faults.append({"fault": "stall"} if stream else {"first_token_delay": 3})  # a timeout
    for fault in faults:
        response = await post_json(base_url, {"messages": MESSAGES, "stream": stream, "x_fake": fault})
        assert response.code == 200, fault
        assert FALLBACK in response.body.decode(), fault
    await upstream.close()  # unreachable
    response = await post_json(base_url, {"messages": MESSAGES, "stream": stream})
    assert response.code == 200 and FALLBACK in response.body.decode()
    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    assert health["chat"]["fallback"] == len(faults) + 1 and health["chat"]["error"] == 0


@pytest.mark.parametrize("overrides", [{"fallback_reply": FALLBACK}])
@pytest.mark.parametrize("fault", [{"fault": "drop", "after": 1}, {"fault": "error_event", "after": 1}],
                         ids=["dropped", "error-event"])
async def test_an_upstream_that_fails_after_its_role_chunk_alone_still_gets_the_fallback_reply(
    overrides, base_url, client, fault
):
    # The role chunk says nothing: a replica would be left silent by an error event there. The
    # fallback is the rest of the completion the caller is reading (one id, one role chunk).
    chunks = [c async for c in await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"x_fake": fault})]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FALLBACK
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] == ["assistant"]
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    assert health["chat"]["fallback"] == 1 and health["chat"]["error"] == 0
