"""GET /iss through the real app: current state, ?at=, ?track=, and OpenAI-shaped 400s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from services.iss.orbit import ground_distance_km
from tests.conftest import error_of


async def _get(base_url: str, path: str):
    return await AsyncHTTPClient().fetch(base_url + path, raise_error=False, request_timeout=10)


async def test_iss_returns_the_current_enriched_state(base_url, open_notify):
    response = await _get(base_url, "/iss")
    assert response.code == 200
    body = orjson.loads(response.body)
    assert body["source"] == "open-notify"
    assert open_notify.requests["open-notify"] == 1
    lat, lon = open_notify.truth_at(datetime.fromisoformat(body["at"]))
    assert ground_distance_km(lat, lon, body["latitude"], body["longitude"]) < 15
    for key in ("altitude_km", "speed_kmh", "sunlit", "ground_daylight", "over", "nearest_city",
                "nearest_city_km", "nearest_city_direction", "accuracy", "description"):
        assert body[key] is not None, key
    assert 350 < body["altitude_km"] < 450
    assert 26000 < body["speed_kmh"] < 29000
    assert "UTC" in body["description"] and "km/h" in body["description"]


async def test_iss_at_gives_the_propagated_state_then(base_url, open_notify):
    when = datetime.now(UTC) + timedelta(minutes=30)
    response = await _get(base_url, "/iss?at=" + quote(when.isoformat()))
    assert response.code == 200
    body = orjson.loads(response.body)
    assert abs(datetime.fromisoformat(body["at"]) - when) < timedelta(milliseconds=1)
    lat, lon = open_notify.truth_at(when)
    assert ground_distance_km(lat, lon, body["latitude"], body["longitude"]) < 50


async def test_iss_at_reads_offsets_and_takes_a_bare_time_as_utc(base_url):
    when = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    india = when.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    bare = when.replace(tzinfo=None).isoformat()
    zulu = when.isoformat().replace("+00:00", "Z")
    bodies = [orjson.loads((await _get(base_url, "/iss?at=" + quote(text))).body) for text in (zulu, india, bare)]
    assert {body["at"] for body in bodies} == {zulu}
    assert len({(body["latitude"], body["longitude"]) for body in bodies}) == 1


async def test_iss_track_lists_ground_track_points(base_url):
    response = await _get(base_url, "/iss?track=45&step=60")
    body = orjson.loads(response.body)
    track = body["track"]
    assert len(track) == 91
    assert {"latitude", "longitude", "at"} <= set(track[0])
    assert all(abs(point["latitude"]) < 52.0 for point in track)
    whole_day = orjson.loads((await _get(base_url, "/iss?track=1440")).body)["track"]
    assert 500 <= len(whole_day) <= 600


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("at=yesterday", "at"),
        ("at=" + quote((datetime.now(UTC) + timedelta(days=2)).isoformat()), "at"),
        ("track=-5", "track"),
        ("track=nan", "track"),
        ("track=10&step=1", "step"),
    ],
)
async def test_iss_bad_query_is_a_400_naming_the_parameter(base_url, query, param):
    response = await _get(base_url, "/iss?" + query)
    assert response.code == 400
    error = error_of(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
