"""Passes of the station over a place: rise, culmination and set, and whether people can see it.

Pure computation on an orbit model (any function from a moment to a TEME position): sampled once a
minute to find each elevation peak, refined by golden-section search, and rise and set found by
bisection to a second. A pass is visible when, at some moment above the horizon limit, the
observer is in darkness (the Sun at least 6° below the horizon: civil twilight over) and the
station is in sunlight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.common.iso_time import iso_z
from services.iss.orbit import Vector, earth_fixed, gmst, in_sunlight, julian, sun_direction, sun_elevation_deg
from services.iss.places import Observer

TemePosition = Callable[[datetime], Vector]

DEFAULT_MIN_ELEVATION = 10.0
DARK_SUN_ELEVATION = -6.0
MAX_DAYS = 10.0
_STEP_S = 60.0
_VISIBLE_STEP_S = 10.0
_COMPASS16 = (
    "N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW",
)


@dataclass(frozen=True)
class Pass:
    """One pass above `min_elevation`: times in UTC, directions as azimuths (degrees from north)."""

    rise: datetime
    culmination: datetime
    set: datetime
    max_elevation: float
    rise_azimuth: float
    culmination_azimuth: float
    set_azimuth: float
    visible: bool
    visible_from: datetime | None = None
    visible_until: datetime | None = None

    @property
    def duration_s(self) -> float:
        return (self.set - self.rise).total_seconds()


def compass16(azimuth: float) -> str:
    return _COMPASS16[int(((azimuth % 360) + 11.25) // 22.5) % 16]


class _Sky:
    """Elevation and azimuth of the station seen from one observer."""

    def __init__(self, position: TemePosition, observer: Observer) -> None:
        self.position = position
        self.observer = observer
        lat, lon = math.radians(observer.latitude), math.radians(observer.longitude)
        self.site = earth_fixed(observer.latitude, observer.longitude, 0.0)
        self.up = (math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat))
        self.east = (-math.sin(lon), math.cos(lon), 0.0)
        self.north = (-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat))

    def look(self, when: datetime) -> tuple[float, float, Vector]:
        """(elevation°, azimuth°, TEME position) at `when`."""
        r = self.position(when)
        theta = gmst(*julian(when))
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        x = cos_t * r[0] + sin_t * r[1] - self.site[0]
        y = -sin_t * r[0] + cos_t * r[1] - self.site[1]
        z = r[2] - self.site[2]
        distance = math.sqrt(x * x + y * y + z * z)
        up = (x * self.up[0] + y * self.up[1] + z * self.up[2]) / distance
        east = x * self.east[0] + y * self.east[1]
        north = x * self.north[0] + y * self.north[1] + z * self.north[2]
        return math.degrees(math.asin(max(-1.0, min(1.0, up)))), math.degrees(math.atan2(east, north)) % 360, r

    def elevation(self, when: datetime) -> float:
        return self.look(when)[0]


def find_passes(
    position: TemePosition, observer: Observer, start: datetime, days: float = 3.0,
    min_elevation: float = DEFAULT_MIN_ELEVATION, limit: int = 20,
) -> list[Pass]:
    """The passes whose culmination falls between `start` and `start + days`, in time order."""
    days = max(0.0, min(days, MAX_DAYS))
    sky = _Sky(position, observer)
    steps = int(days * 86400 / _STEP_S) + 1
    times = [start + timedelta(seconds=i * _STEP_S) for i in range(-1, steps + 1)]
    elevations = [sky.elevation(when) for when in times]
    passes: list[Pass] = []
    for i in range(1, len(times) - 1):
        # A peak among the samples; a pass whose true peak clears the limit is at least near it.
        if not (elevations[i] >= elevations[i - 1] and elevations[i] > elevations[i + 1]):
            continue
        if elevations[i] < min_elevation - 25.0:
            continue
        peak = _golden_max(sky.elevation, times[i - 1], times[i + 1])
        peak_elevation = sky.elevation(peak)
        if peak_elevation < min_elevation or not start <= peak <= times[-2]:
            continue
        rise = _crossing(sky.elevation, peak, -1, min_elevation)
        set_ = _crossing(sky.elevation, peak, +1, min_elevation)
        passes.append(_describe(sky, rise, peak, set_, peak_elevation))
        if len(passes) >= limit:
            break
    return passes


def _golden_max(f: Callable[[datetime], float], low: datetime, high: datetime) -> datetime:
    ratio = 0.6180339887498949
    a, b = 0.0, (high - low).total_seconds()
    for _ in range(22):
        x1, x2 = b - ratio * (b - a), a + ratio * (b - a)
        if f(low + timedelta(seconds=x1)) < f(low + timedelta(seconds=x2)):
            a = x1
        else:
            b = x2
    return _whole_second(low + timedelta(seconds=(a + b) / 2))


def _crossing(f: Callable[[datetime], float], peak: datetime, direction: int, limit: float) -> datetime:
    """The moment (to a second) the elevation crosses `limit` before (-1) or after (+1) the peak."""
    inside, outside = peak, peak
    for _ in range(40):  # a pass above any limit lasts well under 20 minutes either side
        outside = outside + timedelta(seconds=direction * 30)
        if f(outside) < limit:
            break
        inside = outside
    for _ in range(6):
        middle = inside + (outside - inside) / 2
        if f(middle) >= limit:
            inside = middle
        else:
            outside = middle
    return _whole_second(inside + (outside - inside) / 2)


def _whole_second(moment: datetime) -> datetime:
    """`moment` to the nearest second: every time a pass gives (rise, culmination, set, visibility) is
    whole seconds, whatever fraction of a second the search started at."""
    return moment.replace(microsecond=0) + timedelta(seconds=1 if moment.microsecond >= 500_000 else 0)


def _describe(sky: _Sky, rise: datetime, peak: datetime, set_: datetime, peak_elevation: float) -> Pass:
    visible_from = visible_until = None
    span = (set_ - rise).total_seconds()
    count = max(2, int(span // _VISIBLE_STEP_S) + 1)
    observer = sky.observer
    for index in range(count + 1):
        when = rise + timedelta(seconds=min(span, round(index * span / count)))
        if sun_elevation_deg(observer.latitude, observer.longitude, when) > DARK_SUN_ELEVATION:
            continue
        _, _, r = sky.look(when)
        if in_sunlight(r, sun_direction(*julian(when))):
            visible_from = visible_from or when
            visible_until = when
    return Pass(
        rise=rise, culmination=peak, set=set_, max_elevation=round(peak_elevation, 1),
        rise_azimuth=round(sky.look(rise)[1], 1), culmination_azimuth=round(sky.look(peak)[1], 1),
        set_azimuth=round(sky.look(set_)[1], 1), visible=visible_from is not None,
        visible_from=visible_from, visible_until=visible_until,
    )


def pass_dict(item: Pass, observer: Observer) -> dict[str, Any]:
    """A pass as JSON: each time in UTC and in the place's local time."""
    zone = observer.zone()

    def moment(when: datetime | None) -> dict[str, str] | None:
        if when is None:
            return None
        entry = {"utc": iso_z(when)}
        if zone is not None:
            entry["local"] = when.astimezone(zone).isoformat()
        return entry

    return {
        "rise": moment(item.rise),
        "culmination": moment(item.culmination),
        "set": moment(item.set),
        "duration_seconds": round(item.duration_s),
        "max_elevation_deg": item.max_elevation,
        "rise_direction": compass16(item.rise_azimuth),
        "culmination_direction": compass16(item.culmination_azimuth),
        "set_direction": compass16(item.set_azimuth),
        "rise_azimuth_deg": item.rise_azimuth,
        "set_azimuth_deg": item.set_azimuth,
        "visible": item.visible,
        "visible_from": moment(item.visible_from),
        "visible_until": moment(item.visible_until),
    }


def local_phrase(when: datetime, observer: Observer) -> str:
    """'Tue 01 Dec 18:42 local time (17:42 UTC)', to the nearest minute; UTC alone when the zone is unknown."""
    when = (when + timedelta(seconds=30)).replace(second=0, microsecond=0)
    utc = when.strftime("%H:%M UTC")
    zone = observer.zone()
    if zone is None:
        return when.strftime("%a %d %b ") + utc
    local = when.astimezone(zone)
    return f"{local.strftime('%a %d %b %H:%M')} local time ({utc})"
