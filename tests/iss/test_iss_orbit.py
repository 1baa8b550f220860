"""SGP4 propagation against skyfield (an independent implementation), TLE checks, the Sun."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from skyfield.api import EarthSatellite, load, wgs84
from skyfield.framelib import itrs

from services.iss.anchor import anchor
from services.iss.orbit import (
    ground_in_daylight,
    in_sunlight,
    julian,
    point_from_teme,
    propagate,
    sun_direction,
    teme_state,
)
from services.iss.sources import Fix
from services.iss.tle import TleError, parse_tle
from tests.fakes.iss_sources import fixture_path, retimed_tle

TLE_TEXT = fixture_path("iss_zarya.tle").read_text(encoding="ascii")
ELEMENTS = parse_tle(TLE_TEXT, "bundled")


def test_fixture_tle_parses_with_its_epoch():
    assert ELEMENTS.catalog_number == 25544
    assert ELEMENTS.epoch.strftime("%Y-%m-%d %H:%M:%S") == "2026-10-09 19:42:49"


@pytest.mark.parametrize("hours", [0.0, 0.5, 6.0, 30.0, -20.0, 72.0])
def test_propagation_matches_skyfield_within_005_degrees(hours):
    when = ELEMENTS.epoch + timedelta(hours=hours)
    ours = propagate(ELEMENTS.satrec, when)
    ts = load.timescale(builtin=True)
    satellite = EarthSatellite(ELEMENTS.line1, ELEMENTS.line2, ts=ts)
    position = satellite.at(ts.from_datetime(when))
    theirs = wgs84.geographic_position_of(position)
    assert abs(ours.latitude - theirs.latitude.degrees) < 0.05
    dlon = (ours.longitude - theirs.longitude.degrees + 180) % 360 - 180
    assert abs(dlon) < 0.05
    assert abs(ours.altitude_km - theirs.elevation.km) < 1.0
    # The orbital (inertial) speed, as skyfield gives it in its GCRS frame: within 1%.
    inertial = position.velocity.km_per_s
    assert ours.speed_kmh == pytest.approx((inertial.dot(inertial) ** 0.5) * 3600, rel=0.01)


def test_the_speed_is_the_orbital_speed_wheretheiss_reports():
    """wheretheiss.at's recorded sample (its `velocity`, km/h) against our speed for the same orbit at
    that moment: within 1%. The speed relative to the rotating Earth, ~1,000 km/h less, is not it."""
    sample = orjson.loads(fixture_path("wheretheiss_25544.json").read_bytes())
    when = datetime.fromtimestamp(sample["timestamp"], UTC)
    elements = parse_tle(retimed_tle(TLE_TEXT, when - timedelta(hours=3)), "test")
    ours = propagate(elements.satrec, when)
    assert ours.speed_kmh == pytest.approx(sample["velocity"], rel=0.01)
    _, earth_relative = satellite_at(elements, when).frame_xyz_and_velocity(itrs)
    assert earth_relative.km_per_s.dot(earth_relative.km_per_s) ** 0.5 * 3600 < sample["velocity"] * 0.97


def satellite_at(elements, when):
    ts = load.timescale(builtin=True)
    return EarthSatellite(elements.line1, elements.line2, ts=ts).at(ts.from_datetime(when))


def test_a_wrong_checksum_or_shape_is_rejected():
    name, line1, line2 = TLE_TEXT.strip().splitlines()
    bad_digit = line1[:68] + str((int(line1[68]) + 1) % 10)
    with pytest.raises(TleError, match="checksum"):
        parse_tle(f"{name}\n{bad_digit}\n{line2}", "test")
    # A changed element with the old checksum is caught too.
    tampered = line2[:20] + ("1" if line2[20] != "1" else "2") + line2[21:]
    with pytest.raises(TleError, match="checksum"):
        parse_tle(f"{name}\n{line1}\n{tampered}", "test")
    with pytest.raises(TleError):
        parse_tle("<html>blocked</html>", "test")
    assert parse_tle(f"{line1}\n{line2}", "test").name == "UNKNOWN"


def test_retimed_tle_keeps_valid_checksums():
    epoch = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    elements = parse_tle(retimed_tle(TLE_TEXT, epoch), "test")
    assert abs((elements.epoch - epoch).total_seconds()) < 0.01


def test_anchor_recovers_the_along_track_offset_of_stale_elements():
    when = ELEMENTS.epoch + timedelta(days=40)
    # The station 1234 s further along its orbit than the elements say, seen from the Earth now.
    truth = point_from_teme(*teme_state(ELEMENTS.satrec, when + timedelta(seconds=1234)), when)
    fix = Fix("open-notify", truth.latitude, truth.longitude, when, when)
    result = anchor(ELEMENTS, fix)
    assert abs(result.shift_s - 1234) < 1.0
    assert result.residual_km < 2.0
    assert result.agreement_km > 1000


def test_anchor_leaves_recent_agreeing_elements_alone():
    fresh = parse_tle(retimed_tle(TLE_TEXT, datetime.now(UTC) - timedelta(hours=2)), "celestrak")
    when = datetime.now(UTC)
    point = propagate(fresh.satrec, when)
    result = anchor(fresh, Fix("open-notify", point.latitude + 0.05, point.longitude, when, when))
    assert result.shift_s == 0.0
    assert result.residual_km < 10


def test_ground_daylight_at_the_june_solstice():
    noon = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
    assert ground_in_daylight(0.0, 0.0, noon)
    assert not ground_in_daylight(0.0, 180.0, noon)
    assert ground_in_daylight(80.0, 180.0, noon)  # polar day
    assert not ground_in_daylight(-80.0, 0.0, noon)  # polar night


def test_sun_declination_at_the_solstice():
    jd, fr = julian(datetime(2026, 6, 21, 12, 0, tzinfo=UTC))
    z = sun_direction(jd, fr)[2]
    assert abs(math.degrees(math.asin(z)) - 23.44) < 0.1


def test_earth_shadow_is_behind_the_earth_only():
    sun = (1.0, 0.0, 0.0)
    assert in_sunlight((6800.0, 0.0, 0.0), sun)
    assert not in_sunlight((-6800.0, 0.0, 0.0), sun)
    assert in_sunlight((0.0, 6800.0, 0.0), sun)
    assert in_sunlight((-3000.0, 6500.0, 0.0), sun)
    assert not in_sunlight((-3000.0, 6000.0, 0.0), sun)
