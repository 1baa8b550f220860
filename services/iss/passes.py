"""Passes of the station over a place: rise, culmination and set, and whether people can see it.

Pure computation on an orbit model given as positions at many moments (orbit_arrays.TemePositions:
sgp4's array API), vectorized with numpy: the elevation on a coarse grid (every 3 minutes) over the
whole window at once finds each elevation peak; then only the events are refined, all passes
together: the culmination on finer and finer grids down to the second, rise and set by bisection
to half a second. Every time a pass gives is a whole second. A pass is visible when, at some moment
above the horizon limit, the observer is in darkness (the Sun at least 6° below the horizon: civil
twilight over) and the station is in sunlight.

A 10-day search costs a few milliseconds of CPU (docs/iss.md has the figure); the grids are
propagated in slices (orbit_arrays.CHUNK), so a search in a worker thread holds the GIL for about a
millisecond at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.iso_time import iso_z
from services.iss.orbit_arrays import (
    Floats,
    TemePositions,
    gmst,
    in_sunlight,
    julian,
    sun_directions,
    sun_elevations_deg,
)
from services.iss.places import Observer

DEFAULT_MIN_ELEVATION = 10.0
DARK_SUN_ELEVATION = -6.0
MAX_DAYS = 10.0
COARSE_STEP_S = 180.0
# A pass above any limit lasts well under 20 minutes either side of its culmination.
_MARGIN_S = 1200.0
# The culmination's grids: (half width, step) in seconds, each around the best of the one before.
_PEAK_GRIDS = ((COARSE_STEP_S / 2 + 20.0, 20.0), (20.0, 4.0), (4.0, 1.0))
_BISECTIONS = 9  # a 3-minute bracket halved 9 times: under half a second
_VISIBLE_STEP_S = 10.0
_COMPASS16 = (
    "N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW",
)
_DEG = np.pi / 180.0


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
    """Elevation and azimuth of the station seen from one observer, at many moments at once."""

    def __init__(self, positions: TemePositions, observer: Observer) -> None:
        self.positions = positions
        self.observer = observer
        lat, lon = observer.latitude * _DEG, observer.longitude * _DEG
        sin_lat = np.sin(lat)
        # WGS84, as orbit.earth_fixed (height 0).
        f = 1 / 298.257223563
        e2 = f * (2 - f)
        n = 6378.137 / np.sqrt(1 - e2 * sin_lat * sin_lat)
        self.site = np.array([n * np.cos(lat) * np.cos(lon), n * np.cos(lat) * np.sin(lon), n * (1 - e2) * sin_lat])
        self.up = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
        self.east = np.array([-np.sin(lon), np.cos(lon), 0.0])
        self.north = np.array([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)])

    def _relative(self, unix: Floats) -> tuple[Floats, Floats, Floats, Floats]:
        """The station's Earth-fixed offset from the observer (x, y, z km) and its TEME positions."""
        r = self.positions(unix)
        theta = gmst(*julian(unix))
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        x = cos_t * r[:, 0] + sin_t * r[:, 1] - self.site[0]
        y = -sin_t * r[:, 0] + cos_t * r[:, 1] - self.site[1]
        return x, y, r[:, 2] - self.site[2], r

    def _elevation(self, x: Floats, y: Floats, z: Floats) -> Floats:
        up = (x * self.up[0] + y * self.up[1] + z * self.up[2]) / np.sqrt(x * x + y * y + z * z)
        return np.asarray(np.degrees(np.arcsin(np.clip(up, -1.0, 1.0))))

    def elevations(self, unix: Floats) -> Floats:
        """Elevations° at the moments `unix` (NaN where the model fails): what the searches need."""
        x, y, z, _ = self._relative(unix)
        return self._elevation(x, y, z)

    def azimuths(self, unix: Floats) -> Floats:
        """Azimuths° (from north, clockwise) at the moments `unix`."""
        x, y, z, _ = self._relative(unix)
        east = x * self.east[0] + y * self.east[1]
        north = x * self.north[0] + y * self.north[1] + z * self.north[2]
        return np.asarray(np.degrees(np.arctan2(east, north)) % 360)


def find_passes(
    positions: TemePositions, observer: Observer, start: datetime, days: float = 3.0,
    min_elevation: float = DEFAULT_MIN_ELEVATION, limit: int = 20,
) -> list[Pass]:
    """The passes whose culmination falls between `start` and `start + days`, in time order."""
    days = max(0.0, min(days, MAX_DAYS))
    sky = _Sky(positions, observer)
    first, last = start.timestamp(), start.timestamp() + days * 86400.0
    count = int((last - first + 2 * _MARGIN_S) / COARSE_STEP_S) + 2
    times = first - _MARGIN_S + COARSE_STEP_S * np.arange(count)
    elevations = sky.elevations(times)
    # A peak among the samples; a pass whose true peak clears the limit has a sample not far below
    # it (90 s from an overhead peak the station is still ~28° up; from a 10° one, ~6°).
    middle = elevations[1:-1]
    floor = min(min_elevation - 25.0, 0.0)
    peaks = np.nonzero((middle >= elevations[:-2]) & (middle > elevations[2:]) & (middle >= floor))[0]
    peaks = peaks + 1
    peaks = peaks[(times[peaks + 1] >= first) & (times[peaks - 1] <= last)]
    if not len(peaks):
        return []
    # The peak lies towards the higher neighbour (a pass is near enough symmetric about its peak):
    # the first grid covers that side, and a step of the other.
    side = np.where(elevations[peaks + 1] >= elevations[peaks - 1], 1.0, -1.0)
    half, step = _PEAK_GRIDS[0]
    centres = _best_of_grid(sky, times[peaks] + side * (half - step), half, step)
    # Within 10 s of its peak, no pass is more than ~10° lower than at it (an overhead one).
    near = sky.elevations(centres) >= min_elevation - 15.0
    peaks, centres = peaks[near], centres[near]
    culminations = _culminations(sky, centres)
    heights = sky.elevations(culminations)
    keep = (heights >= min_elevation) & (culminations >= first) & (culminations <= last)
    peaks, culminations, heights = peaks[keep][:limit], culminations[keep][:limit], heights[keep][:limit]
    if not len(peaks):
        return []
    reach = int(np.ceil(_MARGIN_S / COARSE_STEP_S))
    before = _brackets(elevations, times, peaks, culminations, -1, reach, min_elevation)
    after = _brackets(elevations, times, peaks, culminations, +1, reach, min_elevation)
    crossings = _crossings(sky, np.concatenate([before[0], after[0]]), np.concatenate([before[1], after[1]]),
                           min_elevation)
    rises, sets = crossings[:len(peaks)], crossings[len(peaks):]
    return _describe(sky, rises, culminations, sets, heights)


def _culminations(sky: _Sky, centres: Floats) -> Floats:
    """Each peak's moment to the second, from the best of the first grid: finer grids around it."""
    best = centres
    for half, step in _PEAK_GRIDS[1:]:
        best = _best_of_grid(sky, np.round(best) if step == 1.0 else best, half, step)
    return best


def _best_of_grid(sky: _Sky, centres: Floats, half: float, step: float) -> Floats:
    """For each centre, the moment of highest elevation on the grid centre ± half, `step` apart."""
    offsets = np.arange(-half, half + step / 2, step)
    grid = centres[:, None] + offsets[None, :]
    values = sky.elevations(grid.ravel()).reshape(grid.shape)
    values = np.where(np.isnan(values), -np.inf, values)
    return np.asarray(grid[np.arange(len(centres)), np.argmax(values, axis=1)])


def _brackets(
    elevations: Floats, times: Floats, peaks: npt.NDArray[np.intp], culminations: Floats, direction: int,
    reach: int, limit: float,
) -> tuple[Floats, Floats]:
    """For each pass, a moment above `limit` and the coarse sample below it before (-1) or after (+1)
    the culmination: the crossing lies between them."""
    inside = np.empty(len(peaks))
    outside = np.empty(len(peaks))
    for index, (peak, culmination) in enumerate(zip(peaks.tolist(), culminations.tolist(), strict=True)):
        j = peak + direction
        for _ in range(reach):
            if not elevations[j] >= limit or j in (0, len(times) - 1):
                break
            j += direction
        outside[index] = times[j]
        inside[index] = culmination if j - direction == peak else times[j - direction]
    return inside, outside


def _crossings(sky: _Sky, inside: Floats, outside: Floats, limit: float) -> Floats:
    """The whole second nearest each moment the elevation crosses `limit` between `inside` (above)
    and `outside` (below): every bracket bisected at once."""
    for _ in range(_BISECTIONS):
        middle = (inside + outside) / 2
        above = sky.elevations(middle) >= limit
        inside = np.where(above, middle, inside)
        outside = np.where(above, outside, middle)
    return np.asarray(np.round((inside + outside) / 2))


def _moment(unix: float) -> datetime:
    return datetime.fromtimestamp(round(unix), UTC)


def _describe(sky: _Sky, rises: Floats, culminations: Floats, sets: Floats, heights: Floats) -> list[Pass]:
    """The passes, with their directions and the part of each that people can see."""
    spans = (sets - rises).astype(np.int64)
    counts = np.maximum(2, spans // int(_VISIBLE_STEP_S) + 1)
    index = np.concatenate([np.arange(n + 1) for n in counts.tolist()])
    owner = np.repeat(np.arange(len(rises)), counts + 1)
    bounds = np.concatenate([[0], np.cumsum(counts + 1)])
    samples = rises[owner] + np.minimum(spans[owner], np.round(index * spans[owner] / counts[owner]))
    observer = sky.observer
    jd, fr = julian(samples)
    dark = sun_elevations_deg(observer.latitude, observer.longitude, jd, fr) <= DARK_SUN_ELEVATION
    # The station's sunlight matters only while the observer is in the dark: most passes are in daylight.
    seen = np.zeros(len(samples), dtype=bool)
    if dark.any():
        r = sky.positions(samples[dark])
        seen[dark] = in_sunlight(r, sun_directions(jd[dark], fr[dark]))
    azimuths = sky.azimuths(np.concatenate([rises, culminations, sets])).reshape(3, len(rises))
    passes = []
    for number in range(len(rises)):
        begin, end = bounds[number], bounds[number + 1]
        visible = samples[begin:end][seen[begin:end]]
        passes.append(Pass(
            rise=_moment(rises[number]), culmination=_moment(culminations[number]), set=_moment(sets[number]),
            max_elevation=round(float(heights[number]), 1), rise_azimuth=round(float(azimuths[0, number]), 1),
            culmination_azimuth=round(float(azimuths[1, number]), 1),
            set_azimuth=round(float(azimuths[2, number]), 1), visible=len(visible) > 0,
            visible_from=_moment(visible[0]) if len(visible) else None,
            visible_until=_moment(visible[-1]) if len(visible) else None,
        ))
    return passes


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
