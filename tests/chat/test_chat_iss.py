"""The ISS block in the chat path: where it goes, what it says, and that the sources never block chat."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from services.iss.block import BLOCK_END, BLOCK_START
from services.iss.orbit import ground_distance_km
from tests.conftest import post_json

MESSAGES = [
    {"role": "system", "content": "You are Nova."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Where is the ISS?"},
]


def _block_of(text: str) -> str:
    start = text.index(BLOCK_START)
    return text[start:text.index(BLOCK_END, start) + len(BLOCK_END)]


async def test_block_appended_to_last_user_message(base_url, upstream, open_notify):
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True})
    assert response.code == 200
    sent = upstream.bodies[-1]["messages"]
    assert sent[:3] == MESSAGES[:3]
    assert len(sent) == len(MESSAGES)
    assert sent[3]["content"].startswith("Where is the ISS?\n\n" + BLOCK_START)
    block = _block_of(sent[3]["content"])
    assert "UTC" in block and "open-notify" in block.lower().replace(" ", "-")
    assert open_notify.requests["open-notify"] >= 1


async def test_injected_position_matches_the_source(base_url, upstream, open_notify):
    await post_json(base_url, {"messages": MESSAGES})
    block = _block_of(upstream.bodies[-1]["messages"][-1]["content"])
    match = re.search(r"At (\S+ \S+) UTC .*? at (\d+\.\d+)°([NS]), (\d+\.\d+)°([EW])", block)
    assert match, block
    at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    lat = float(match[2]) * (1 if match[3] == "N" else -1)
    lon = float(match[4]) * (1 if match[5] == "E" else -1)
    # The block's time is printed to the second; the station covers about 0.07° a second.
    truths = [open_notify.truth_at(at + timedelta(seconds=s)) for s in (0, 0.5, 1)]
    close = [abs(lat - t_lat) < 0.1 and abs((lon - t_lon + 180) % 360 - 180) < 0.1 for t_lat, t_lon in truths]
    assert any(close), (block, truths)


@pytest.mark.parametrize("overrides", [{"iss_inject": "system"}])
async def test_block_as_trailing_system_message(overrides, base_url, upstream):
    await post_json(base_url, {"messages": MESSAGES})
    sent = upstream.bodies[-1]["messages"]
    assert sent[:4] == MESSAGES
    assert sent[4]["role"] == "system"
    assert sent[4]["content"].startswith(BLOCK_START) and sent[4]["content"].endswith(BLOCK_END)


async def test_content_parts_pass_through_untouched(base_url, upstream):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    parts = [{"type": "text", "text": "What is this?"}, image]
    await post_json(base_url, {"messages": [{"role": "user", "content": parts}]})
    sent = upstream.bodies[-1]["messages"][0]["content"]
    assert sent[:2] == parts
    assert sent[2]["type"] == "text" and sent[2]["text"].startswith(BLOCK_START)


@pytest.mark.parametrize("overrides", [{"bundled_tle": None}])
async def test_source_down_chat_still_answers_and_says_unavailable(overrides, base_url, upstream, open_notify):
    open_notify.fail("open-notify", "500")
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True})
    assert response.code == 200
    assert response.body.endswith(b"data: [DONE]\n\n")
    block = _block_of(upstream.bodies[-1]["messages"][-1]["content"])
    assert "unavailable" in block


@pytest.mark.parametrize("overrides", [{"iss_timeout": 0.5, "bundled_tle": None}])
async def test_source_hanging_chat_answers_within_the_timeout(overrides, base_url, upstream, open_notify):
    open_notify.fail("open-notify", "hang")
    started = time.monotonic()
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True})
    elapsed = time.monotonic() - started
    assert response.code == 200
    # The behaviour is the time: the answer comes once ISS_TIMEOUT (0.5 s) has passed, not when the
    # source gives up (the fake hangs for 30 s). 5 s leaves a busy machine plenty of room.
    assert elapsed < 5.0, f"chat waited {elapsed:.2f}s on a hanging ISS source"
    assert "unavailable" in _block_of(upstream.bodies[-1]["messages"][-1]["content"])


async def test_concurrent_cold_requests_share_one_fetch(base_url, upstream, open_notify):
    responses = await asyncio.gather(
        *(post_json(base_url, {"messages": MESSAGES, "stream": True}) for _ in range(12))
    )
    assert all(r.code == 200 for r in responses)
    assert open_notify.requests["open-notify"] == 1
    # And the cached position serves the next requests too (Open Notify asks for 5 s between polls).
    await post_json(base_url, {"messages": MESSAGES})
    assert open_notify.requests["open-notify"] == 1


@pytest.mark.parametrize("overrides", [{"iss_inject": "off"}])
async def test_injection_can_be_turned_off(overrides, base_url, upstream):
    await post_json(base_url, {"messages": MESSAGES})
    assert upstream.bodies[-1]["messages"] == MESSAGES


async def test_all_sources_down_falls_back_to_the_shipped_elements(base_url, upstream, open_notify):
    open_notify.fail_all("500")
    response = await post_json(base_url, {"messages": MESSAGES, "stream": True})
    assert response.code == 200
    block = _block_of(upstream.bodies[-1]["messages"][-1]["content"])
    assert "bundled" in block and "rough estimate" in block and "days old" in block


async def test_injected_position_is_the_sources_point_even_off_the_models_orbit(base_url, upstream, open_notify):
    # A source reporting latitudes no orbit model of the ISS reaches: the block still says where the
    # source says, moved on to the block's time, never a point from the model thousands of km away.
    def off_orbit(when: datetime) -> tuple[float, float]:
        seconds = when.timestamp()
        return 65.0, ((seconds * 0.05) % 360.0) - 180.0

    open_notify.truth_track = off_orbit
    await post_json(base_url, {"messages": MESSAGES})
    block = _block_of(upstream.bodies[-1]["messages"][-1]["content"])
    match = re.search(r"At (\S+ \S+) UTC .*? at (\d+\.\d+)°([NS]), (\d+\.\d+)°([EW])", block)
    assert match, block
    at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    lat = float(match[2]) * (1 if match[3] == "N" else -1)
    lon = float(match[4]) * (1 if match[5] == "E" else -1)
    assert ground_distance_km(lat, lon, *off_orbit(at)) < 10.0, block
    assert "rough" not in block
