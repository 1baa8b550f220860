"""What the cluster's Redis carries about the ISS, and the checks it must pass before a worker uses it.

Redis is data, not code: anyone who can write to it can publish a fix or an element set, so what
is read back is schema-checked and bounded before the tracker sees it:

- a fix: its source from a fixed list (the name that reaches the ISS block is this module's own
  string, never Redis's), numbers in range, an altitude and speed the ISS can have, timestamps near
  now, and a position the orbit model puts the station at (near the ground track of the element
  set in use, and along it within what the elements' age allows); with no elements known, no fix
  from the cluster is taken;
- an element set: the ISS's catalog number, an epoch neither in the future nor long past, the
  ISS's mean motion, eccentricity and inclination; its name and origin are fixed strings.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from services.iss.accuracy import elements_error_km
from services.iss.orbit import julian, teme_from_geodetic
from services.iss.sources import MAX_CLOCK_SKEW, Fix
from services.iss.tle import Elements, TleError, parse_omm, parse_tle

# One message (or the element set's key) read from Redis, before it is decoded.
MAX_MESSAGE_BYTES = 8 * 1024

# The live sources whose fixes travel through the cluster: the ISS block names them with these strings.
FIX_SOURCES = ("open-notify", "wheretheiss")
VISIBILITIES = ("daylight", "eclipsed")
# What the ISS can be: its altitude has stayed within about 330-460 km; its speed about 27,600 km/h.
ALTITUDE_KM = (300.0, 500.0)
SPEED_KMH = (26_000.0, 29_500.0)
# A fix older than this is no fix of now (a poller publishes each one as it arrives).
MAX_FIX_AGE = timedelta(minutes=5)
# How near the orbit model a fix must be: across the track, a margin that grows with the elements'
# age (their plane drifts slowly); along it, the elements' own error bound and this margin.
CROSS_TRACK_KM = 100.0
CROSS_TRACK_KM_PER_DAY = 2.0
CROSS_TRACK_MOST_KM = 400.0
ALONG_TRACK_MARGIN_KM = 50.0
ORBIT_SPEED_KMS = 7.66
HALF_ORBIT_S = 2900.0
COARSE_STEP_S = 60.0
GOLDEN_ROUNDS = 24
_EARTH_RADIUS_KM = 6371.0

# An element set: the ISS (catalog 25544), its orbit's shape, an epoch of the recent past.
ISS_CATALOG = 25544
ELEMENTS_NAME = "ISS (ZARYA)"
ELEMENTS_ORIGIN = "celestrak"  # only CelesTrak's elements are shared through the cluster
MEAN_MOTION_REV_DAY = (15.0, 16.0)
MAX_ECCENTRICITY = 0.01
INCLINATION_DEG = (51.0, 52.3)
MAX_EPOCH_AHEAD = timedelta(hours=1)
MAX_ELEMENTS_AGE = timedelta(days=30)
_MAX_TLE_CHARS = 400
_MAX_OMM_FIELDS = 40
_MAX_OMM_VALUE_CHARS = 64


class Untrusted(ValueError):
    """What was read from Redis is not something this worker will use; the message says why (no data in it)."""


# ---- fixes ----


def encode_fix(fix: Fix) -> dict[str, Any]:
    return {
        "source": fix.source, "latitude": fix.latitude, "longitude": fix.longitude,
        "measured_at": fix.measured_at.isoformat(), "received_at": fix.received_at.isoformat(),
        "altitude_km": fix.altitude_km, "speed_kmh": fix.speed_kmh, "visibility": fix.visibility,
    }


def checked_fix(data: Any, elements: Elements | None, now: datetime | None = None) -> Fix:
    """The fix in `data` once every check passed; raises Untrusted."""
    now = now or datetime.now(UTC)
    if not isinstance(data, dict):
        raise Untrusted("a fix that is not an object")
    source = _one_of(data.get("source"), FIX_SOURCES, "source")
    measured = _time(data.get("measured_at"), "measured_at", now)
    received = _time(data.get("received_at"), "received_at", now)
    if received < measured - MAX_CLOCK_SKEW:
        raise Untrusted("received_at before measured_at")
    altitude = data.get("altitude_km")
    speed = data.get("speed_kmh")
    visibility = data.get("visibility")
    fix = Fix(
        source=source,
        latitude=_number(data.get("latitude"), "latitude", -90.0, 90.0),
        longitude=_number(data.get("longitude"), "longitude", -180.0, 180.0),
        measured_at=measured,
        received_at=received,
        altitude_km=None if altitude is None else _number(altitude, "altitude_km", *ALTITUDE_KM),
        speed_kmh=None if speed is None else _number(speed, "speed_kmh", *SPEED_KMH),
        visibility=None if visibility is None else _one_of(visibility, VISIBILITIES, "visibility"),
    )
    if elements is None:
        raise Untrusted("no orbit model to check the fix against")
    off_km = off_track_km(fix, elements)
    allowed = min(CROSS_TRACK_MOST_KM, CROSS_TRACK_KM + CROSS_TRACK_KM_PER_DAY * abs(
        elements.age_days(fix.measured_at)))
    if off_km > allowed:
        raise Untrusted(f"a position {off_km:.0f} km from the orbit model (more than {allowed:.0f} km)")
    return fix


def off_track_km(fix: Fix, elements: Elements) -> float:
    """How far the fix is from the nearest point of the elements' orbit within the along-track window
    their age allows (in the inertial frame: a model early or late along its orbit is at the fix's point
    at another time, when the Earth had turned less or more). A coarse grid, then a golden-section
    search around its best point: at most about 150 propagations, well under a millisecond."""
    window_s = min(HALF_ORBIT_S, (elements_error_km(elements.age_days(fix.measured_at)) + ALONG_TRACK_MARGIN_KM)
                   / ORBIT_SPEED_KMS)
    height = fix.altitude_km if fix.altitude_km is not None else 420.0
    target = _unit(teme_from_geodetic(fix.latitude, fix.longitude, height, fix.measured_at))
    jd, fr = julian(fix.measured_at)
    satrec = elements.satrec

    def distance(shift_s: float) -> float:
        error, r, _ = satrec.sgp4(jd, fr + shift_s / 86400.0)
        return math.inf if error else _angle_km(_unit(r), target)

    steps = max(2, math.ceil(2 * window_s / COARSE_STEP_S))
    step = 2 * window_s / steps
    best_s, best = min(((-window_s + i * step, distance(-window_s + i * step)) for i in range(steps + 1)),
                       key=lambda pair: pair[1])
    low, high = max(-window_s, best_s - step), min(window_s, best_s + step)
    ratio = 0.6180339887498949
    for _ in range(GOLDEN_ROUNDS):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if distance(a) < distance(b):
            high = b
        else:
            low = a
    found = min(best, distance((low + high) / 2))
    if math.isinf(found):
        raise Untrusted("an orbit model that does not propagate to the fix's time")
    return found


# ---- element sets ----


def encode_elements(elements: Elements) -> dict[str, Any]:
    fetched = elements.fetched_at.isoformat() if elements.fetched_at else None
    if elements.omm is not None:
        return {"format": "omm", "omm": elements.omm, "fetched_at": fetched}
    return {"format": "tle", "text": elements.text(), "fetched_at": fetched}


def checked_elements(data: Any, now: datetime | None = None) -> Elements:
    """The element set in `data` once parsed and checked as the ISS's; raises Untrusted."""
    now = now or datetime.now(UTC)
    if not isinstance(data, dict):
        raise Untrusted("an element set that is not an object")
    fetched = None
    if data.get("fetched_at") is not None:
        fetched = _time(data.get("fetched_at"), "fetched_at", now, oldest=MAX_ELEMENTS_AGE)
    try:
        if data.get("format", "tle") == "omm":
            elements = parse_omm(_omm_fields(data.get("omm")), ELEMENTS_ORIGIN, fetched)
        elif data.get("format", "tle") == "tle":
            elements = parse_tle(_tle_text(data.get("text")), ELEMENTS_ORIGIN, fetched)
        else:
            raise Untrusted("an element set of an unknown format")
    except TleError as exc:
        raise Untrusted(f"unreadable elements ({type(exc).__name__})") from None
    _check_iss(elements, now)
    return elements


def _tle_text(text: Any) -> str:
    """The two element lines under this module's own name (a name line from Redis is not kept)."""
    if not isinstance(text, str) or len(text) > _MAX_TLE_CHARS:
        raise Untrusted("a TLE that is not a short string")
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) not in (2, 3):
        raise Untrusted("a TLE that is not two or three lines")
    return f"{ELEMENTS_NAME}\n{lines[-2]}\n{lines[-1]}\n"


def _omm_fields(fields: Any) -> dict[str, Any]:
    if not isinstance(fields, dict) or len(fields) > _MAX_OMM_FIELDS:
        raise Untrusted("an OMM record that is not a small object")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if not isinstance(key, str) or len(key) > _MAX_OMM_VALUE_CHARS:
            raise Untrusted("an OMM record with an odd key")
        if isinstance(value, str) and len(value) > _MAX_OMM_VALUE_CHARS:
            raise Untrusted("an OMM record with a long value")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise Untrusted("an OMM record with a value that is not a number or short string")
        out[key] = value
    # The free-text fields are this module's, not Redis's.
    out.update(OBJECT_NAME=ELEMENTS_NAME, OBJECT_ID="1998-067A", CLASSIFICATION_TYPE="U")
    return out


def _check_iss(elements: Elements, now: datetime) -> None:
    satrec = elements.satrec
    if elements.catalog_number != ISS_CATALOG:
        raise Untrusted("elements of another satellite")
    if elements.epoch > now + MAX_EPOCH_AHEAD:
        raise Untrusted("elements with an epoch in the future")
    if elements.epoch < now - MAX_ELEMENTS_AGE:
        raise Untrusted("elements older than 30 days")
    rev_day = satrec.no_kozai * 1440.0 / (2 * math.pi)
    if not MEAN_MOTION_REV_DAY[0] <= rev_day <= MEAN_MOTION_REV_DAY[1]:
        raise Untrusted("a mean motion that is not the ISS's")
    if not 0.0 <= satrec.ecco < MAX_ECCENTRICITY:
        raise Untrusted("an eccentricity that is not the ISS's")
    if not INCLINATION_DEG[0] <= math.degrees(satrec.inclo) <= INCLINATION_DEG[1]:
        raise Untrusted("an inclination that is not the ISS's")


# ---- small parts ----


def _one_of(value: Any, allowed: tuple[str, ...], name: str) -> str:
    """The allow-list's own string equal to `value` (so no string from Redis goes further)."""
    for known in allowed:
        if value == known:
            return known
    raise Untrusted(f"a {name} that is not one of {', '.join(allowed)}")


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Untrusted(f"a {name} that is not a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise Untrusted(f"a {name} out of range")
    return number


def _time(value: Any, name: str, now: datetime, oldest: timedelta = MAX_FIX_AGE) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise Untrusted(f"a {name} that is not a short string")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise Untrusted(f"a {name} that is not a time") from None
    if when.tzinfo is None:
        raise Untrusted(f"a {name} without a time zone")
    when = when.astimezone(UTC)
    if when > now + MAX_CLOCK_SKEW:
        raise Untrusted(f"a {name} in the future")
    if when < now - oldest:
        raise Untrusted(f"a {name} too long ago")
    return when


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / n, v[1] / n, v[2] / n)


def _angle_km(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """The angle between two unit vectors as a distance on the ground."""
    d = math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)
    return 2 * math.asin(min(1.0, d / 2)) * _EARTH_RADIUS_KM
