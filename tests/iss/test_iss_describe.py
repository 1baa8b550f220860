"""The text a model reads: units, UTC time, source, accuracy, the place, and honesty when rough."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.iss.describe import describe_state
from services.iss.state import IssState

AT = datetime(2026, 11, 26, 12, 0, 5, tzinfo=UTC)


def _state(**changes) -> IssState:
    values = dict(
        latitude=-21.95, longitude=87.37, at=AT, measured_at=AT - timedelta(seconds=3),
        source="open-notify", accuracy="open-notify fix from 3 s earlier, moved on; within about 10 km",
        altitude_km=421.4, speed_kmh=27580.0, sunlit=True, ground_daylight=False,
        over="Indian Ocean", over_water=True, nearest_city="Perth, Australia",
        nearest_city_km=2430.0, nearest_city_direction="northwest",
    )
    values.update(changes)
    return IssState(**values)


def test_live_state_reads_with_units_time_source_and_place():
    text = describe_state(_state())
    assert "2026-11-26 12:00:05 UTC" in text
    assert "21.95°S, 87.37°E" in text
    assert "over the Indian Ocean" in text
    assert "about 2,400 km northwest of Perth, Australia" in text
    assert "altitude 421 km" in text and "orbital speed 27,580 km/h" in text
    assert "in sunlight" in text and "night on the ground below" in text
    assert "Source: open-notify" in text and "within about 10 km" in text
    assert "rough" not in text
    assert text.count(". ") <= 2 and len(text) < 500


def test_country_names_and_close_cities():
    text = describe_state(_state(over="United States", over_water=False, nearest_city_km=12.0,
                                 nearest_city="Denver, United States"))
    assert "over the United States" in text and "right above Denver" in text
    assert "over France" in describe_state(_state(over="France", over_water=False))


def test_rough_estimate_says_so_and_why():
    text = describe_state(_state(
        source="bundled-tle", rough=True, measured_at=AT - timedelta(days=48),
        accuracy="SGP4 from bundled orbital elements 48 days old; a rough estimate: no live source "
        "answered, and elements this old can be off by thousands of km along the orbit",
    ))
    assert "roughly estimated" in text
    assert "48 days old" in text and "thousands of km" in text


def test_missing_enrichment_is_left_out_not_invented():
    text = describe_state(_state(altitude_km=None, speed_kmh=None, sunlit=None, ground_daylight=None,
                                 over=None, nearest_city=None, nearest_city_km=None))
    assert "altitude" not in text and "over" not in text and "None" not in text
