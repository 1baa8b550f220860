"""MAX_STREAM_SECONDS: a whole-answer deadline counted in time, not socket reads: an upstream that
sends only comments, or a byte at a time, or tokens too slowly, is cut off on time."""

from __future__ import annotations

import time

import orjson
import pytest

from config import load_settings
from tests.conftest import error_of, post_json, sse_events

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


def _body(stream: bool, **fake: object) -> dict:
    return {"model": "m", "messages": MESSAGES, "stream": stream, "x_fake": fake}


@pytest.mark.parametrize("overrides", [{"max_stream_seconds": 1.0, "upstream_timeout": 5.0}])
@pytest.mark.parametrize("fake", [{"fault": "comments", "seconds": 30}, {"fault": "drip", "seconds": 30}])
async def test_comments_or_a_drip_do_not_keep_an_answer_open(base_url, upstream, fake):
    started = time.monotonic()
    response = await post_json(base_url, _body(True, **fake))
    assert time.monotonic() - started < 10
    assert response.code == 504
    assert error_of(response)["code"] == "stream_too_long"
    assert await upstream.wait_streams_closed(5.0)


@pytest.mark.parametrize("overrides", [{"max_stream_seconds": 1.0, "fallback_reply": "Let me check on that."}])
async def test_past_the_deadline_before_any_content_the_fallback_is_spoken(base_url, upstream):
    response = await post_json(base_url, _body(True, fault="comments", seconds=30))
    assert response.code == 200
    events = sse_events(response.body)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    text = "".join((orjson.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1])
    assert text == "Let me check on that."


@pytest.mark.parametrize("overrides", [{"max_stream_seconds": 1.0}])
async def test_a_slow_answer_is_cut_mid_stream_with_one_error_and_one_done(base_url, upstream):
    response = await post_json(base_url, _body(True, tokens=100, gap=0.1))
    assert response.code == 200
    events = sse_events(response.body)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert orjson.loads(events[-2])["error"]["code"] == "stream_too_long"
    assert sum('"content"' in e for e in events) < 60
    assert await upstream.wait_streams_closed(5.0)


def test_max_stream_seconds_defaults_to_five_minutes_and_can_be_turned_off():
    assert load_settings([], environ={}, env_file=None).max_stream_seconds == 300.0
    assert load_settings([], environ={"MAX_STREAM_SECONDS": "0"}, env_file=None).max_stream_seconds is None
