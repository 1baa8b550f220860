"""The built-in responder answers the question asked, offline, and says it is not a language model."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from skyfield.api import EarthSatellite, load, wgs84

from config import BUNDLED_TLE
from services.iss.places import Places
from services.iss.tle import load_tle_file
from tests.conftest import post_json, sse_events

OFFLINE = {"llm_backend": "builtin", "openai_api_key": None, "openai_base_url": None,
           "iss_sources": ("open-notify", "crew")}


async def _ask(base_url: str, question: str, stream: bool = True) -> str:
    body = {"model": "x", "messages": [{"role": "system", "content": "You are Nova."},
                                       {"role": "user", "content": question}], "stream": stream}
    response = await post_json(base_url, body)
    assert response.code == 200
    if not stream:
        return orjson.loads(response.body)["choices"][0]["message"]["content"]
    chunks = [orjson.loads(data) for data in sse_events(response.body) if data != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.mark.parametrize("overrides", [OFFLINE])
async def test_when_can_i_see_the_iss_from_paris_offline_gets_pass_times(overrides, base_url, open_notify):
    open_notify.fail_all("500")  # no network: the shipped elements are all there is
    text = await _ask(base_url, "When can I see the ISS from Paris?")
    assert "not a language model" in text
    assert "Paris, France" in text
    elements = load_tle_file(BUNDLED_TLE, "bundled")
    ts = load.timescale(builtin=True)
    satellite = EarthSatellite(elements.line1, elements.line2, ts=ts)
    paris = Places().find("Paris")
    now = datetime.now(UTC)
    times, kinds = satellite.find_events(wgs84.latlon(paris.latitude, paris.longitude),
                                         ts.from_datetime(now - timedelta(hours=1)),
                                         ts.from_datetime(now + timedelta(days=6)), altitude_degrees=10.0)
    rises = [t.utc_datetime() for t, kind in zip(times, kinds, strict=True) if kind == 0]
    stamps = re.findall(r"\w{3} (\d{2} \w{3} \d{2}:\d{2}) local time \((\d{2}:\d{2}) UTC\)", text)
    assert stamps, text
    zone = paris.zone()
    for local_text, _utc in stamps:
        local = datetime.strptime(f"{now.year} {local_text}", "%Y %d %b %H:%M").replace(tzinfo=zone)
        if local < now - timedelta(days=200):  # across new year
            local = local.replace(year=now.year + 1)
        nearest = min(rises, key=lambda rise: abs(rise - local))
        assert abs((nearest - local).total_seconds()) <= 60, (local, nearest)
    # Elements 52 days old: the answer says how far off the times can be.
    assert "can be off by" in text


@pytest.mark.parametrize("overrides", [OFFLINE])
async def test_other_questions_get_their_own_answers(overrides, base_url, open_notify, app):
    from tests.fakes.iss_sources import wait_until

    await app.services.tracker.start()
    await wait_until(lambda: app.services.tracker.crew() is not None, 5.0, "the crew")
    crew = await _ask(base_url, "Who is on board the space station?")
    assert "Example Person A and Example Person B" in crew and "2 people" in crew
    assert "not a language model" in crew
    high = await _ask(base_url, "How high does it fly?", stream=False)
    assert "km above the ground" in high and "km/h" not in high
    fast = await _ask(base_url, "How fast is it going?")
    assert "km/h" in fast and "above the ground" not in fast
    dark = await _ask(base_url, "Is it day or night under the station?")
    assert "on the ground below it" in dark
    where = await _ask(base_url, "Where is the ISS right now?")
    assert "UTC the ISS is at" in where and "open-notify" in where
    nowhere = await _ask(base_url, "When can I see the ISS from Atlantis?")
    assert "Unknown place 'Atlantis'" in nowhere
    vague = await _ask(base_url, "When can I see it?")
    assert "Tell me a city" in vague


@pytest.mark.parametrize("overrides", [OFFLINE])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_content_part_without_text_is_read_past_not_a_500(overrides, base_url, stream):
    """An image part (its `text` null or absent) among the user's parts: the answer, with usage."""
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}, "text": None},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "text", "text": "Where is the ISS?"}]
    body = {"model": "x", "messages": [{"role": "user", "content": parts}], "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}
    response = await post_json(base_url, {key: value for key, value in body.items() if value is not None})
    assert response.code == 200, response.body
    if stream:
        events = [orjson.loads(data) for data in sse_events(response.body) if data != "[DONE]"]
        assert events[-1]["usage"]["prompt_tokens"] > 0
    else:
        assert orjson.loads(response.body)["usage"]["prompt_tokens"] > 0
