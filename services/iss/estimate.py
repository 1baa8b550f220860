"""Turn what the tracker knows (elements, a live fix, the place below) into an IssState. Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from services.iss.accuracy import ROUGH_AFTER_DAYS, age_words, elements_error_km, round_km
from services.iss.anchor import Anchor
from services.iss.geography import Place
from services.iss.orbit import (
    IDENTITY,
    OrbitPoint,
    Vector,
    bearing_deg,
    ground_distance_km,
    ground_in_daylight,
    propagate,
    teme_state,
)
from services.iss.orbit_arrays import TemePositions, shifted_and_turned
from services.iss.sources import Fix
from services.iss.state import IssState
from services.iss.tle import Elements

# A live fix keeps steering the orbit model for this long after the last successful poll.
LIVE_HOLD = timedelta(minutes=30)
# Above this, an estimate is flagged rough for the reader.
ROUGH_KM = 100.0
# Open Notify's whole-second timestamps and 4-decimal positions: about one second of travel.
FIX_ERROR_KM = 8.0
ORBIT_SPEED_KMS = 7.66
ORBIT_RADIUS_KM = 6790.0

_COMPASS = (
    "north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest",
)
_ORIGIN_LABEL = {"celestrak": "CelesTrak", "bundled": "bundled"}


@dataclass(frozen=True)
class OrbitModel:
    """Where the station is at any moment, how far off that can be, and what it rests on."""

    teme: Callable[[datetime], tuple[Vector, Vector]]
    point: Callable[[datetime], OrbitPoint]
    error_km: Callable[[datetime], float]
    basis: str
    # The same model at many moments at once (pass searches), and what it rests on: the element set
    # and the anchor's time shift to the second (the anchor's small rotation, renewed with each fix,
    # is left out: it moves a pass by about a second).
    positions: TemePositions
    key: tuple[object, ...]

    def position(self, when: datetime) -> Vector:
        return self.teme(when)[0]


def anchored_model(anchor: Anchor) -> OrbitModel:
    fix = anchor.fix
    return OrbitModel(
        anchor.teme, anchor.point,
        lambda when: anchored_error_km(anchor, (when - fix.measured_at).total_seconds()),
        f"the {fix.source} fix moved along the orbit with {_elements_phrase(anchor.elements, fix.measured_at)}",
        shifted_and_turned(anchor.elements.satrec, anchor.shift_s,
                           None if anchor.rotation is IDENTITY else anchor.rotation),
        ("anchored", *_elements_key(anchor.elements), round(anchor.shift_s)),
    )


def elements_model(elements: Elements, now: datetime) -> OrbitModel:
    satrec = elements.satrec
    return OrbitModel(
        lambda when: teme_state(satrec, when), lambda when: propagate(satrec, when),
        lambda when: elements_error_km(elements.age_days(when)),
        f"{_elements_phrase(elements, now)} (no live fix)",
        shifted_and_turned(satrec, 0.0, None), ("elements", *_elements_key(elements)),
    )


def _elements_key(elements: Elements) -> tuple[object, ...]:
    """What identifies an element set: its object, epoch and lines (empty when it came as OMM)."""
    return (elements.catalog_number, elements.epoch.isoformat(), elements.line1, elements.line2)


@dataclass(frozen=True)
class Located:
    """A place looked up for the point (latitude, longitude)."""

    latitude: float
    longitude: float
    place: Place


def compass(bearing: float) -> str:
    """Eight-point compass word for a bearing in degrees."""
    return _COMPASS[int(((bearing % 360) + 22.5) // 45) % 8]


def _elements_phrase(elements: Elements, when: datetime) -> str:
    age = elements.age_days(when) * 86400
    label = _ORIGIN_LABEL.get(elements.origin, elements.origin)
    relation = "old" if age >= 0 else "before their epoch"
    return f"{label} orbital elements {age_words(age)} {relation}"


class PlaceFields(TypedDict, total=False):
    """The IssState fields that say what is below the station."""

    over: str | None
    over_water: bool | None
    nearest_city: str
    nearest_city_km: float
    nearest_city_direction: str


def _place_fields(lat: float, lon: float, located: Located | None) -> PlaceFields:
    if located is None:
        return {}
    # The lookup is refreshed about once a second; an older one for a far-away point is dropped.
    if ground_distance_km(lat, lon, located.latitude, located.longitude) > 150.0:
        return {}
    place = located.place
    fields: PlaceFields = {"over": place.over, "over_water": place.water}
    if place.city and place.city_latitude is not None and place.city_longitude is not None:
        fields["nearest_city"] = place.city
        fields["nearest_city_km"] = round(
            ground_distance_km(place.city_latitude, place.city_longitude, lat, lon), 1
        )
        fields["nearest_city_direction"] = compass(
            bearing_deg(place.city_latitude, place.city_longitude, lat, lon)
        )
    return fields


def anchored_state(when: datetime, anchor: Anchor, located: Located | None) -> IssState:
    """The fix moved on to `when` by the model's own motion since the fix's time."""
    fix, elements = anchor.fix, anchor.elements
    point = anchor.point(when)
    since_fix = (when - fix.measured_at).total_seconds()
    error = anchored_error_km(anchor, since_fix)
    moved = "moved on" if since_fix >= 0 else "moved back"
    relation = "earlier" if since_fix >= 0 else "later"
    text = (
        f"{fix.source} fix from {age_words(since_fix)} {relation}, {moved} along the orbit with SGP4 "
        f"({_elements_phrase(elements, when)}); within about {round_km(error)}"
    )
    rough = error > ROUGH_KM
    if rough:
        text += "; a rough estimate this far from the fix, because the orbit model does not line up well with it"
    return _state(point, when, fix.measured_at, fix.source, text, rough, error, located)


def anchored_error_km(anchor: Anchor, since_fix_s: float) -> float:
    """How far off the fix moved on by `since_fix_s` can be: the fix's own error plus the model's drift.

    The drift has two parts: how fast the elements' own error grows at their age, and the heading
    error of a model whose plane may be turned from the real one (Anchor.plane_error_km: the
    residual's angle once two fixes gave the source's track; with one fix, what the elements may be
    off by, as the fix says nothing of the direction of travel).
    """
    elements = anchor.elements
    if anchor.held:
        return FIX_ERROR_KM + ORBIT_SPEED_KMS * abs(since_fix_s)
    age_days = elements.age_days(anchor.fix.measured_at)
    drift_per_s = (elements_error_km(age_days + 1 / 24) - elements_error_km(age_days)) / 3600
    travelled_km = ORBIT_SPEED_KMS * abs(since_fix_s)
    heading_km = travelled_km * min(1.0, anchor.plane_error_km() / ORBIT_RADIUS_KM)
    return FIX_ERROR_KM + max(0.0, drift_per_s) * abs(since_fix_s) + heading_km


def elements_state(when: datetime, elements: Elements, located: Located | None) -> IssState:
    """The elements propagated to `when`, labelled with their age and what that means."""
    point = propagate(elements.satrec, when)
    age_days = elements.age_days(when)
    error = elements_error_km(age_days)
    source = f"{elements.origin}-tle"
    rough = abs(age_days) > ROUGH_AFTER_DAYS
    text = f"SGP4 from {_elements_phrase(elements, when)}; "
    if rough:
        off = "thousands of km" if error >= 1000 else f"about {round_km(error)}"
        text += (
            f"a rough estimate: no live source answered, and elements this old can be off by {off} "
            "along the orbit (drag and reboosts)"
        )
    else:
        text += f"within about {round_km(error)}"
    return _state(point, when, elements.epoch, source, text, rough, error, located)


def _state(
    point: OrbitPoint, when: datetime, measured_at: datetime, source: str, accuracy: str, rough: bool,
    error_km: float, located: Located | None,
) -> IssState:
    """A propagated point as the IssState the chat path, /iss and the console read."""
    return IssState(
        latitude=point.latitude,
        longitude=point.longitude,
        at=when,
        measured_at=measured_at,
        source=source,
        accuracy=accuracy,
        altitude_km=point.altitude_km,
        speed_kmh=point.speed_kmh,
        sunlit=point.sunlit,
        ground_daylight=ground_in_daylight(point.latitude, point.longitude, when),
        rough=rough,
        accuracy_km=round(error_km, 1),
        **_place_fields(point.latitude, point.longitude, located),
    )


def fix_state(fix: Fix, located: Located | None) -> IssState:
    """A live fix as measured, when no orbit model is available to move it on."""
    return IssState(
        latitude=fix.latitude,
        longitude=fix.longitude,
        at=fix.measured_at,
        measured_at=fix.measured_at,
        source=fix.source,
        accuracy=f"as measured by {fix.source}; no orbit model was available to move it on to now",
        altitude_km=fix.altitude_km,
        speed_kmh=fix.speed_kmh,
        sunlit=None if fix.visibility is None else fix.visibility == "daylight",
        ground_daylight=ground_in_daylight(fix.latitude, fix.longitude, fix.measured_at),
        accuracy_km=FIX_ERROR_KM,
        **_place_fields(fix.latitude, fix.longitude, located),
    )
