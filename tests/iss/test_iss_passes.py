"""Passes over a place against skyfield's find_events, places and time zones, and GET /iss/passes."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import orjson
import pytest
from skyfield.api import EarthSatellite, load, wgs84
from tornado.httpclient import AsyncHTTPClient

from services.iss.orbit_arrays import shifted_and_turned
from services.iss.passes import DARK_SUN_ELEVATION, find_passes
from services.iss.places import PlaceError, Places
from services.iss.tle import parse_tle
from tests.conftest import error_of
from tests.fakes.iss_sources import fixture_path

ELEMENTS = parse_tle(fixture_path("iss_zarya.tle").read_text(encoding="ascii"), "bundled")
PLACES = Places()
POSITIONS = shifted_and_turned(ELEMENTS.satrec, 0.0, None)
CITIES = ["Paris", "Tokyo", "Sydney", "São Paulo, Brazil", "London, Canada", "Singapore", "Nairobi"]


def _skyfield_events(observer, start: datetime, end: datetime, elevation: float):
    ts = load.timescale(builtin=True)
    satellite = EarthSatellite(ELEMENTS.line1, ELEMENTS.line2, ts=ts)
    times, kinds = satellite.find_events(
        wgs84.latlon(observer.latitude, observer.longitude), ts.from_datetime(start), ts.from_datetime(end),
        altitude_degrees=elevation,
    )
    return [(t.utc_datetime(), int(kind)) for t, kind in zip(times, kinds, strict=True)]


@pytest.mark.parametrize("city", CITIES)
@pytest.mark.parametrize(("day", "elevation"), [(0, 10.0), (1, 10.0), (3, 10.0), (2, 45.0), (4, 0.0)])
def test_rise_culmination_and_set_match_skyfield_within_a_minute(city, day, elevation):
    observer = PLACES.find(city)
    start = ELEMENTS.epoch + timedelta(days=day)
    end = start + timedelta(days=1)
    ours = find_passes(POSITIONS, observer, start, 1.0, elevation, limit=50)
    events = _skyfield_events(observer, start - timedelta(minutes=20), end + timedelta(minutes=20), elevation)
    culminations = [when for when, kind in events if kind == 1 and start <= when <= end]
    assert len(ours) == len(culminations), (city, day, ours, events)
    for item in ours:
        for moment, kind in ((item.rise, 0), (item.culmination, 1), (item.set, 2)):
            nearest = min((when for when, k in events if k == kind), key=lambda when: abs(when - moment))
            # Culmination is a flat maximum: a few seconds either way change the elevation by nothing.
            limit = 60 if kind != 1 else 90
            assert abs((nearest - moment).total_seconds()) < limit, (city, day, kind, moment, nearest)
        assert elevation <= item.max_elevation <= 90.0


def test_a_pass_is_visible_only_in_the_observers_twilight_or_night():
    observer = PLACES.find("Paris")
    passes = find_passes(POSITIONS, observer, ELEMENTS.epoch, 10.0, 10.0,
                         limit=80)
    visible = [item for item in passes if item.visible]
    assert visible and len(visible) < len(passes)
    for item in visible:
        # Seen from the ground only once the sky is dark enough: the Sun 6 degrees or more below the
        # horizon (civil twilight's end), at the first moment given and the last.
        for moment in (item.visible_from, item.visible_until):
            assert _sun_elevation(observer.latitude, observer.longitude, moment) <= DARK_SUN_ELEVATION + 0.05, item
        assert item.rise <= item.visible_from <= item.visible_until <= item.set


@pytest.mark.parametrize(
    ("query", "name", "zone"),
    [
        ("Paris", "Paris, France", "Europe/Paris"),
        ("paris, FRANCE", "Paris, France", "Europe/Paris"),
        ("London, Canada", "London, Canada", "America/Toronto"),
        ("Sao Paulo", "São Paulo, Brazil", "America/Sao_Paulo"),
        ("New York", "New York City, United States", "America/New_York"),
        ("-33.87, 151.21", "33.87°S, 151.21°E", "Australia/Sydney"),
    ],
)
def test_places_by_name_country_or_coordinates_with_their_time_zone(query, name, zone):
    observer = PLACES.find(query)
    assert observer.name == name
    assert observer.timezone == zone


@pytest.mark.parametrize("query", ["Atlantis", "Pariss", "", "x" * 500, "95, 10", "10, 200"])
def test_unknown_places_and_bad_coordinates_are_refused(query):
    with pytest.raises(PlaceError) as raised:
        PLACES.find(query)
    if query == "Pariss":
        assert raised.value.suggestions == ("Paris, France",)


async def _get(base_url: str, path: str):
    return await AsyncHTTPClient().fetch(base_url + path, raise_error=False, request_timeout=20)


async def test_passes_endpoint_answers_in_utc_and_local_time(base_url):
    response = await _get(base_url, "/iss/passes?place=" + quote("Paris, France") + "&days=2&limit=3")
    assert response.code == 200
    body = orjson.loads(response.body)
    assert body["place"]["name"] == "Paris, France" and body["place"]["timezone"] == "Europe/Paris"
    assert 1 <= len(body["passes"]) <= 3
    now = datetime.now(UTC)
    for item in body["passes"]:
        rise = datetime.fromisoformat(item["rise"]["utc"])
        assert now - timedelta(minutes=20) < rise < now + timedelta(days=2)
        local = datetime.fromisoformat(item["rise"]["local"])
        assert local == rise and local.utcoffset() == timedelta(hours=1)  # CET in December
        assert item["rise_direction"] and item["set_direction"] and isinstance(item["visible"], bool)
        assert item["max_elevation_deg"] >= 10
    assert "lined up" in body["basis"] or "fix" in body["basis"]
    by_coordinates = orjson.loads((await _get(base_url, "/iss/passes?lat=48.8534&lon=2.3488&days=2&limit=3")).body)
    assert [p["rise"]["utc"] for p in by_coordinates["passes"]] == [p["rise"]["utc"] for p in body["passes"]]


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("place=Atlantis", "place", "unknown_place"),
        ("lat=100&lon=2", "lat", None),
        ("lat=48&lon=abc", "lon", None),
        ("lat=48", "place", None),
        ("", "place", None),
        ("place=Paris&days=0", "days", None),
        ("place=Paris&days=30", "days", None),
        ("place=Paris&min_elevation=95", "min_elevation", None),
        ("place=Paris&visible_only=maybe", "visible_only", None),
    ],
)
async def test_passes_endpoint_bad_values_are_400s_naming_the_parameter(base_url, query, param, code):
    response = await _get(base_url, "/iss/passes?" + query)
    assert response.code == 400
    error = error_of(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    if code:
        assert error["code"] == code
    if query == "place=Atlantis":
        assert "Atlantis" in error["message"]


def test_pass_times_are_whole_seconds_whatever_the_start_s_fraction():
    observer = PLACES.find("Paris")
    start = ELEMENTS.epoch.replace(microsecond=0) + timedelta(seconds=0.734521)
    passes = find_passes(POSITIONS, observer, start, 10.0, 10.0, limit=80)
    assert passes and any(item.visible for item in passes)
    for item in passes:
        moments = [item.rise, item.culmination, item.set, item.visible_from, item.visible_until]
        assert all(when is None or when.microsecond == 0 for when in moments), item
        assert item.rise < item.culmination < item.set


async def test_passes_endpoint_gives_whole_seconds_in_every_time(base_url):
    response = await _get(base_url, "/iss/passes?place=Paris&days=3&limit=5&visible_only=false")
    assert response.code == 200
    body = orjson.loads(response.body)
    assert body["passes"]
    whole = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")
    assert whole.match(body["from"]), body["from"]
    for item in body["passes"]:
        for key in ("rise", "culmination", "set", "visible_from", "visible_until"):
            if item[key] is not None:
                assert whole.match(item[key]["utc"]) and whole.match(item[key]["local"]), (key, item[key])


def test_a_search_started_just_after_a_culmination_does_not_return_that_pass():
    observer = PLACES.find("Paris")
    first, second = find_passes(POSITIONS, observer, ELEMENTS.epoch, 2.0, 10.0, limit=2)
    for after in (1, 20, 50):  # within one sampling step of the culmination
        start = first.culmination + timedelta(seconds=after)
        passes = find_passes(POSITIONS, observer, start, 2.0, 10.0, limit=2)
        assert all(item.culmination >= start for item in passes), (after, passes[0])
        assert passes[0].culmination == second.culmination



def _sun_elevation(latitude: float, longitude: float, when: datetime) -> float:
    """The Sun's elevation in degrees (the US Naval Observatory's approximate formulas, good to about
    0.01 degree for centuries around 2000): worked out here, independently of services.iss.orbit."""
    d = (when - datetime(2000, 1, 1, 12, tzinfo=UTC)).total_seconds() / 86400
    g = math.radians(357.529 + 0.98560028 * d)
    ecliptic = math.radians(280.459 + 0.98564736 * d + 1.915 * math.sin(g) + 0.020 * math.sin(2 * g))
    tilt = math.radians(23.439 - 0.00000036 * d)
    right_ascension = math.atan2(math.cos(tilt) * math.sin(ecliptic), math.cos(ecliptic))
    declination = math.asin(math.sin(tilt) * math.sin(ecliptic))
    sidereal = math.radians((18.697374558 + 24.06570982441908 * d) * 15 + longitude)
    hour_angle = sidereal - right_ascension
    lat = math.radians(latitude)
    return math.degrees(math.asin(math.sin(lat) * math.sin(declination)
                                  + math.cos(lat) * math.cos(declination) * math.cos(hour_angle)))
