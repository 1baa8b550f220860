"""Parsing the live sources' bodies: the fixture shapes, strings for numbers, and bad bodies."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from services.iss.sources import Fix, SourceError, check_moving, parse_open_notify, parse_wheretheiss
from tests.fakes.iss_sources import FakeIssSources, fixture_path


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
    ("mutate", "reason"),
    [
        (lambda d: d.update(message="failure"), "message is not 'success'"),
        (lambda d: d.pop("iss_position"), "iss_position missing"),
        (lambda d: d["iss_position"].update(latitude="north"), "latitude is not a number"),
        (lambda d: d["iss_position"].update(latitude="91"), "latitude out of range"),
        (lambda d: d["iss_position"].update(longitude="nan"), "longitude out of range"),
        (lambda d: d["iss_position"].update(longitude=None), "longitude missing or not a number"),
        (lambda d: d.update(timestamp="soon"), "timestamp is not a number"),
        (lambda d: d.update(timestamp=d["timestamp"] - 3600), "s behind the local clock"),
        (lambda d: d.update(timestamp=d["timestamp"] + 3600), "s ahead of the local clock"),
    ],
)
def test_open_notify_bad_bodies_are_rejected(mutate, reason):
    data = _fixture("open_notify_iss_now.json")
    received = _received(data)
    mutate(data)
    # Each for its own reason: the message is what /healthz and the log say about the source.
    with pytest.raises(SourceError, match=re.escape(reason)):
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


@pytest.mark.parametrize("request_line", [b"GARBAGE", b"GET /iss-now.json", b"POST /iss-now.json HTTP/1.1"])
async def test_the_fake_sources_fail_a_test_that_sends_them_a_malformed_request(request_line):
    # The fakes stand for Open Notify, wheretheiss.at and CelesTrak: a request they cannot read is
    # a bug in what the project sent, and must fail the test rather than pass as a failing source.
    fakes = FakeIssSources()
    await fakes.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", fakes.port)
    writer.write(request_line + b"\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    with pytest.raises(AssertionError, match="malformed request"):
        await fakes.close()


def _fix_at(seconds: float, latitude: float) -> Fix:
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    return Fix(source="wheretheiss", latitude=latitude, longitude=10.0, measured_at=moment,
               received_at=moment + timedelta(seconds=0.3))


@pytest.mark.parametrize("seconds", [5, 10, 60])
def test_a_feed_crawling_far_slower_than_the_iss_is_refused_as_frozen(seconds):
    first = _fix_at(0, 0.0)
    # About 1 km/s along a meridian (a degree of latitude is 111.2 km), where the ISS covers 7.66 km/s
    # over the ground: the feed repeats an old position with a fresh timestamp, nudged.
    crawled = _fix_at(seconds, seconds * 1.0 / 111.2)
    with pytest.raises(SourceError, match="frozen: position moved"):
        check_moving(crawled, first)
    # The real ground speed passes.
    check_moving(_fix_at(seconds, seconds * 7.66 / 111.2), first)
