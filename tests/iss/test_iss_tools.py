"""The layer's own tools: offered to the upstream model, run here, the answer continued in one stream."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import orjson
import pytest
from skyfield.api import EarthSatellite, load, wgs84

from config import BUNDLED_TLE
from services.chat.endings import Outcome, failed_before_first_token
from services.common.errors import ApiError, tool_round_error
from services.iss.places import Places
from services.iss.queries import IssQueries
from services.iss.tle import load_tle_file
from services.iss.tools import IssTools
from services.iss.tracker import IssTracker
from tests.conftest import post_json, sse_events
from tests.fakes.iss_sources import FakeIssSources, tracker_settings

QUESTION = [{"role": "user", "content": "When can I see the ISS from Paris?"}]
CALLER_TOOL = {"type": "function", "function": {"name": "open_map", "parameters": {"type": "object"}}}


def _chunks(body: bytes) -> list[dict]:
    return [orjson.loads(data) for data in sse_events(body) if data != "[DONE]"]


def _content(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _tool_calls(chunks: list[dict]) -> list[dict]:
    return [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or ()]


def _skyfield_rises(start: datetime, days: float) -> list[datetime]:
    elements = load_tle_file(BUNDLED_TLE, "bundled")
    ts = load.timescale(builtin=True)
    satellite = EarthSatellite(elements.line1, elements.line2, ts=ts)
    paris = Places().find("Paris")
    times, kinds = satellite.find_events(wgs84.latlon(paris.latitude, paris.longitude), ts.from_datetime(start),
                                         ts.from_datetime(start + timedelta(days=days)), altitude_degrees=10.0)
    return [t.utc_datetime() for t, kind in zip(times, kinds, strict=True) if kind == 0]


async def test_the_model_calls_the_pass_tool_and_the_caller_gets_pass_times_only(base_url, upstream, app):
    upstream.scripted_tools = True
    response = await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True})
    assert response.code == 200
    chunks = _chunks(response.body)
    text = _content(chunks)
    assert _tool_calls(chunks) == []  # the layer's call never reaches the caller
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert sum(1 for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
    stamps = [datetime.fromisoformat(s) for s in re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)]
    assert stamps, text
    rises = _skyfield_rises(stamps[0] - timedelta(hours=1), 6.0)
    for stamp in stamps:
        assert min(abs((rise - stamp).total_seconds()) for rise in rises) <= 60, (stamp, rises)
    # Two upstream rounds: the second carried the call and its result.
    assert upstream.requests == 2
    second = upstream.bodies[-1]["messages"]
    assert second[-2]["role"] == "assistant" and second[-2]["tool_calls"][0]["function"]["name"] == "iss_passes"
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == "call_passes"
    assert "Paris, France" in second[-1]["content"]
    status = app.services.backend.describe()["iss_tools"]
    assert status["calls"] == 1 and status["failures"] == 0
    # The console's record of the request shows the call, its arguments, its result and its time.
    app.services.hub.flush()
    record = app.services.hub.snapshot()[-1]
    (call,) = record["tools"]
    assert call["name"] == "iss_passes" and orjson.loads(call["arguments"]) == {"place": "Paris"}
    assert "Paris, France" in call["result"] and call["ok"] and call["ms"] >= 0


async def test_a_caller_tool_in_the_same_turn_reaches_the_caller(base_url, upstream):
    upstream.scripted_tools = True
    body = {"model": "m", "messages": QUESTION, "stream": True, "tools": [CALLER_TOOL]}
    response = await post_json(base_url, body)
    chunks = _chunks(response.body)
    calls = _tool_calls(chunks)
    assert {call["function"]["name"] for call in calls if "function" in call and "name" in call["function"]} == {
        "open_map"}
    assert "".join(call["function"].get("arguments", "") for call in calls) == '{"location":"Paris","round":2}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert "You can see it at:" in _content(chunks)
    # The first round asked for both; the layer ran its own and asked again with that result only.
    second = upstream.bodies[-1]["messages"]
    assert [call["function"]["name"] for call in second[-2]["tool_calls"]] == ["iss_passes"]
    assert upstream.bodies[-1]["tools"][0] == CALLER_TOOL


async def test_a_failing_tool_answers_the_model_with_an_error(base_url, upstream):
    upstream.scripted_tools = True
    question = [{"role": "user", "content": "When can I see the ISS from Atlantis?"}]
    response = await post_json(base_url, {"model": "m", "messages": question, "stream": True})
    assert response.code == 200
    result = orjson.loads(upstream.bodies[-1]["messages"][-1]["content"])
    assert "Unknown place 'Atlantis'" in result["error"]
    assert "No pass" in _content(_chunks(response.body))


async def test_an_upstream_refusing_tools_gets_the_request_again_without_them(base_url, upstream, app, caplog):
    upstream.refuse_tools = True
    with caplog.at_level("WARNING", logger="iss_llm.tools"):
        response = await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True})
    assert response.code == 200
    assert _content(_chunks(response.body)).startswith("The station")
    assert upstream.requests == 2 and "tools" not in upstream.bodies[-1]
    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    status = health["iss_tools"]
    [paused] = status["paused_models"]
    assert status["refusals"] == 1 and paused["model"] == "m" and 0 < paused["seconds_left"] <= 600
    assert "does not support tools" in status["last_refusal"]
    assert any("refused the layer's tools" in r.getMessage() for r in caplog.records)
    # Not offered again for a while: one request, no retry.
    await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True})
    assert upstream.requests == 3


@pytest.mark.parametrize("stream", [True, False])
async def test_a_callers_own_400_stays_the_callers_and_leaves_the_tools_offered(stream, base_url, upstream):
    """The upstream refuses the caller's own parameters: asked again without the layer's tools, it
    refuses again; the caller gets that 400, and the tools are not paused for everyone."""
    body = {"model": "m", "messages": QUESTION, "stream": stream, "x_fake": {"fault": "status", "status": 400}}
    response = await post_json(base_url, body)
    assert response.code == 400
    assert orjson.loads(response.body)["error"]["code"] == "upstream_rejected"
    assert upstream.requests == 2 and "tools" in upstream.bodies[0] and "tools" not in upstream.bodies[1]
    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)
    assert health["iss_tools"]["refusals"] == 0
    await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": stream})
    assert "tools" in upstream.bodies[-1]  # still offered


async def test_a_refused_tool_round_is_the_layers_failure_not_the_callers(base_url, upstream):
    """The request of a later round carries the layer's own tool calls and results: the upstream
    refusing it (400) is no fault of the caller's. Streamed, the role chunk already went out, so the
    caller gets an upstream error event, not an invalid_request_error telling it to fix its request."""
    upstream.scripted_tools = True
    upstream.refuse_tool_results = True
    response = await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True})
    assert response.code == 200
    events = [orjson.loads(d) for d in sse_events(response.body) if d != "[DONE]"]
    [error] = [e["error"] for e in events if "error" in e]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_rejected_tool_round")
    assert any(m.get("role") == "tool" for m in upstream.bodies[-1]["messages"])  # the later round was refused


def test_a_refused_tool_round_before_any_token_keeps_the_fallback():
    """Not streamed (nothing sent yet), FALLBACK_REPLY covers a refused later round as it covers any
    failure that is not the caller's; the caller's own 400 it does not cover."""
    refused = ApiError(400, "The upstream LLM rejected the request: context length exceeded.", code="upstream_rejected")
    assert failed_before_first_token(refused, "One moment.").outcome is Outcome.ERROR
    layer = tool_round_error(refused)
    assert not layer.callers_fault and layer.status == 502
    assert failed_before_first_token(layer, "One moment.").outcome is Outcome.FALLBACK


@pytest.mark.parametrize("overrides", [{"iss_tool_rounds": 1}])
async def test_rounds_are_bounded(overrides, base_url, upstream):
    upstream.scripted_tools = True
    response = await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True})
    assert response.code == 200
    # The last round offers no layer tool, so the model has to answer.
    assert upstream.requests == 2
    assert not any(t["function"]["name"].startswith("iss_") for t in upstream.bodies[-1].get("tools") or ())


@pytest.mark.parametrize("overrides", [{"iss_tools": False}])
async def test_iss_tools_off_offers_nothing(overrides, base_url, upstream):
    await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": True})
    assert "tools" not in upstream.bodies[-1]


async def test_a_tool_past_its_timeout_is_an_error_result(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            await tracker.current()
            slow = IssQueries(tracker)
            tools = IssTools(slow, timeout=0.001)
            result = await tools.run("iss_passes", '{"place": "Paris", "days": 10}')
            assert not result.ok and "longer than" in result.content
            await slow.close()
            quick = IssTools(IssQueries(tracker), timeout=5.0)
            for name, arguments in (("iss_passes", "{not json"), ("nope", "{}"), ("iss_position", '{"at": 3}'),
                                    ("iss_position", '{"minutes_from_now": 99999}')):
                failed = await quick.run(name, arguments)
                assert not failed.ok and "error" in orjson.loads(failed.content), (name, failed)
            ok = await quick.run("iss_position", '{"minutes_from_now": 10}')
            assert ok.ok and orjson.loads(ok.content)["latitude"] is not None
        finally:
            await tracker.close()
