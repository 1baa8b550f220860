"""The offline geography: known points, the nearest city, load and lookup budgets."""

from __future__ import annotations

import pytest

from services.iss.geography import Geography, GeographyError


@pytest.fixture(scope="module")
def geography() -> Geography:
    data = Geography()
    data.load()
    return data


@pytest.mark.parametrize(
    ("lat", "lon", "expected", "water"),
    [
        (48.8566, 2.3522, {"France"}, False),
        (0.0, -140.0, {"North Pacific Ocean", "South Pacific Ocean"}, True),
        (30.0, -40.0, {"North Atlantic Ocean"}, True),
        (10.0, 90.0, {"Bay of Bengal", "Indian Ocean"}, True),
        (-35.28, 149.13, {"Australia"}, False),
        (40.71, -74.0, {"United States"}, False),
        (-20.0, 70.0, {"Indian Ocean"}, True),
        (35.0, 18.0, {"Mediterranean Sea", "Ionian Sea"}, True),
    ],
)
def test_known_points(geography, lat, lon, expected, water):
    place = geography.lookup(lat, lon)
    assert place.over in expected
    assert place.water is water


def test_nearest_city(geography):
    assert geography.lookup(48.86, 2.35).city == "Paris, France"
    assert geography.lookup(21.0, -158.0).city == "Honolulu, United States"
    assert geography.lookup(-34.0, 18.6).city == "Cape Town, South Africa"


def test_longitude_wraps_at_the_antimeridian(geography):
    assert geography.lookup(-17.0, 180.0).over == geography.lookup(-17.0, -180.0).over


def test_missing_data_is_a_clear_error(tmp_path):
    data = Geography(tmp_path)
    with pytest.raises(GeographyError):
        data.load()
    assert data.lookup(0.0, 0.0) is None
