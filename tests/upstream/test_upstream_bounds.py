"""Every byte read from a hostile upstream is bounded: SSE lines and events, whole answers, gzip bombs."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from tests.conftest import error_of, post_json, sse_events

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
MB = 1024 * 1024


def _body(stream: bool, **fake: object) -> dict:
    return {"model": "m", "messages": MESSAGES, "stream": stream, "x_fake": fake}


async def test_a_line_that_never_ends_is_a_502_at_the_event_limit(base_url):
    response = await post_json(base_url, _body(True, fault="long_line", bytes=30 * MB))
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "upstream_too_large"
    assert "SSE line" in error["message"] and "UPSTREAM_MAX_EVENT_BYTES" in error["message"]


async def test_an_event_of_many_data_lines_is_a_502_at_the_event_limit(base_url):
    response = await post_json(base_url, _body(True, fault="big_event", bytes=8 * MB))
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "upstream_too_large" and "SSE event" in error["message"]


@pytest.mark.parametrize("overrides", [{"upstream_max_bytes": 2 * MB}])
async def test_a_stream_past_the_answer_limit_ends_with_one_error_event_then_done(base_url):
    response = await post_json(base_url, _body(True, fault="flood", bytes=40 * MB))
    assert response.code == 200  # streaming had begun
    events = sse_events(response.body)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "upstream_too_large" and "UPSTREAM_MAX_BYTES" in error["message"]
    assert len(response.body) < 3 * MB


@pytest.mark.parametrize("overrides", [{"upstream_max_bytes": 2 * MB}])
async def test_a_whole_answer_past_the_limit_is_a_502(base_url):
    response = await post_json(base_url, _body(False, fault="huge_completion", bytes=40 * MB))
    assert response.code == 502
    assert error_of(response)["code"] == "upstream_too_large"


# No keepalive in the test's time: tracemalloc slows inflating 4 MB to seconds, and a keepalive would
# begin the stream (an SSE error event then, not the 502 this checks).
@pytest.mark.parametrize("overrides", [{"upstream_max_bytes": 1 * MB, "keepalive_interval": 120.0}])
@pytest.mark.parametrize("shape", [
    {"stream": False},  # a whole answer
    {"stream": True},  # an event stream (of comments only)
    {"stream": False, "status": 500},  # an error body, read by the openai client
])
async def test_a_gzip_bomb_stops_inflating_at_the_limit(base_url, shape):
    status = shape.get("status")
    fake = {"fault": "gzip_bomb", "bytes": 200 * MB, **({"status": status} if status else {})}
    tracemalloc.start()
    try:
        response = await post_json(base_url, _body(shape["stream"], **fake))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.code == 502
    assert error_of(response)["code"] == "upstream_too_large"
    assert peak < 40 * MB, f"{peak / MB:.0f} MB allocated while reading a 0.5 MB gzip bomb"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gzip_compressed_answer_still_reads(base_url, upstream, stream):
    response = await post_json(base_url, _body(stream, gzip=True, tokens=4))
    assert response.code == 200
    if stream:
        events = sse_events(response.body)
        assert events[-1] == "[DONE]"
        text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                       if orjson.loads(e)["choices"])
    else:
        text = orjson.loads(response.body)["choices"][0]["message"]["content"]
    assert text == "The station is flying"
    assert upstream.headers[-1]["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_limit_counts_the_bytes_once_inflated_not_as_sent(upstream, stream):
    """A gzip answer smaller than UPSTREAM_MAX_BYTES on the wire and larger once inflated is refused."""
    import zlib

    from tests.upstream.upstream_direct import params, streamed, upstream_for

    async with upstream_for(upstream.base_url, upstream_max_bytes=4096) as client:
        if stream:
            _, error = await streamed(client, params(gzip=True, tokens=2000))
        else:
            try:
                await client.complete(params(gzip=True, tokens=2000), None)
                error = None
            except Exception as exc:
                error = exc
        small, _ = await streamed(client, params(gzip=True, tokens=3))
    assert error is not None and (error.status, error.code) == (502, "upstream_too_large")
    assert len(small) == 5  # a gzip answer within the limit reads
    # The premise: on the wire the big answer is within the limit.
    import aiohttp

    async with aiohttp.ClientSession(auto_decompress=False) as session:
        sent = {"model": "m", "messages": MESSAGES, "stream": stream, "x_fake": {"gzip": True, "tokens": 2000}}
        async with session.post(upstream.base_url + "/chat/completions", data=orjson.dumps(sent),
                                headers={"Authorization": f"Bearer {upstream.api_key}"}) as raw:
            wire = await raw.read()
    assert raw.headers["Content-Encoding"] == "gzip"
    assert len(wire) < 4096 < len(zlib.decompress(wire, 16 + zlib.MAX_WBITS))
