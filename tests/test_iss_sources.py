"""Parsing the live sources' bodies: the fixture shapes, strings for numbers, and bad bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.iss.sources import SourceError, parse_open_notify, parse_wheretheiss
from tests.fakes.iss_sources import fixture_path


def _fixture(name: str) -> dict:
    return json.loads(fixture_path(name).read_text(encoding="utf-8"))


def _received(data: dict) -> datetime:
    return datetime.fromtimestamp(data["timestamp"], UTC) + timedelta(seconds=1)


def test_open_notify_fixture_with_string_coordinates():
    data = _fixture("open_notify_iss_now.json")
    fix = parse_open_notify(json.dumps(data), _received(data))
    assert (fix.latitude, fix.longitude) == (-21.9508, 87.3727)
    assert fix.measured_at == datetime.fromtimestamp(data["timestamp"], UTC)
    assert fix.source == "open-notify"


def test_wheretheiss_fixture_with_altitude_velocity_visibility():
    data = _fixture("wheretheiss_25544.json")
    fix = parse_wheretheiss(json.dumps(data), _received(data))
    assert fix.altitude_km == pytest.approx(425.78)
    assert fix.speed_kmh == pytest.approx(27556.98)
    assert fix.visibility == "daylight"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(message="failure"),
        lambda d: d.pop("iss_position"),
        lambda d: d["iss_position"].update(latitude="north"),
        lambda d: d["iss_position"].update(latitude="91"),
        lambda d: d["iss_position"].update(longitude="nan"),
        lambda d: d["iss_position"].update(longitude=None),
        lambda d: d.update(timestamp="soon"),
        lambda d: d.update(timestamp=d["timestamp"] - 3600),  # stale: an hour old
        lambda d: d.update(timestamp=d["timestamp"] + 3600),  # from the future
    ],
)
def test_open_notify_bad_bodies_are_rejected(mutate):
    data = _fixture("open_notify_iss_now.json")
    received = _received(data)
    mutate(data)
    with pytest.raises(SourceError):
        parse_open_notify(json.dumps(data), received)


@pytest.mark.parametrize("body", ["", "not json", "[]", '{"message": "success", "iss_posit'])
def test_unparseable_bodies_are_rejected(body):
    with pytest.raises(SourceError, match="malformed"):
        parse_open_notify(body, datetime.now(UTC))
    with pytest.raises(SourceError, match="malformed"):
        parse_wheretheiss(body, datetime.now(UTC))


def test_wheretheiss_wrong_units_are_rejected():
    data = _fixture("wheretheiss_25544.json")
    data["units"] = "miles"
    with pytest.raises(SourceError, match="units"):
        parse_wheretheiss(json.dumps(data), _received(data))
