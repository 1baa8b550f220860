"""orbit.py's formulas over numpy arrays of moments: many positions in one call (sgp4's array API).

Moments are Unix seconds (float64: well under a microsecond of rounding this century). The results
agree with orbit.py's scalar functions to rounding (tests/iss/test_iss_passes.py checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from sgp4.api import Satrec

from services.iss.orbit import Matrix

Floats = npt.NDArray[np.floating[Any]]
# Many moments (Unix seconds, shape (n,)) to TEME positions in km, shape (n, 3); NaN where the model fails.
TemePositions = Callable[[Floats], Floats]

_UNIX_JD = 2440587.5
_DEG = np.pi / 180.0
_EARTH_RADIUS_KM = 6371.0
# sgp4_array holds the GIL while it runs (about 1 µs a point): a search in a worker thread propagates
# in slices this long and gives the GIL back after each (time.sleep(0)), so the event loop waiting for
# it gets in at once instead of after the interpreter's 5 ms switch interval. With two searches
# running, the loop's lag p95 measured 12-18 ms without the yield, 5 ms with it.
CHUNK = 256


def julian(unix: Floats) -> tuple[Floats, Floats]:
    """(whole, fraction) Julian dates of Unix seconds, split as orbit.julian splits them."""
    days = np.floor(unix / 86400.0)
    return _UNIX_JD + days, (unix - days * 86400.0) / 86400.0


def gmst(jd: Floats, fr: Floats) -> Floats:
    """Greenwich mean sidereal time (IAU 1982) in radians (orbit.gmst, element-wise)."""
    t = (jd - 2451545.0 + fr) / 36525.0
    seconds = 67310.54841 + (876600.0 * 3600.0 + 8640184.812866) * t + 0.093104 * t * t - 6.2e-6 * t * t * t
    return np.asarray((seconds % 86400.0) / 240.0 * _DEG, dtype=np.float64)


def sun_directions(jd: Floats, fr: Floats) -> Floats:
    """Unit vectors to the Sun in the equatorial frame of date (orbit.sun_direction), shape (n, 3)."""
    n = jd - 2451545.0 + fr
    mean_lon = (280.460 + 0.9856474 * n) % 360.0
    anomaly = (357.528 + 0.9856003 * n) % 360.0 * _DEG
    ecliptic_lon = (mean_lon + 1.915 * np.sin(anomaly) + 0.020 * np.sin(2 * anomaly)) * _DEG
    obliquity = (23.439 - 0.0000004 * n) * _DEG
    return np.stack(
        (np.cos(ecliptic_lon), np.cos(obliquity) * np.sin(ecliptic_lon), np.sin(obliquity) * np.sin(ecliptic_lon)),
        axis=-1,
    )


def in_sunlight(r: Floats, sun: Floats) -> npt.NDArray[np.bool_]:
    """Cylindrical shadow model (orbit.in_sunlight) for each row of `r` and `sun`."""
    along = np.einsum("ij,ij->i", r, sun)
    perp2 = np.einsum("ij,ij->i", r, r) - along * along
    return np.asarray((along >= 0) | (perp2 > _EARTH_RADIUS_KM**2))


def sun_elevations_deg(latitude: float, longitude: float, jd: Floats, fr: Floats) -> Floats:
    """The Sun's geometric elevation (degrees) seen from a ground point (orbit.sun_elevation_deg)."""
    sun = sun_directions(jd, fr)
    theta = gmst(jd, fr)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    ex = sun[:, 0] * cos_t + sun[:, 1] * sin_t
    ey = -sun[:, 0] * sin_t + sun[:, 1] * cos_t
    lat, lon = latitude * _DEG, longitude * _DEG
    up = (np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat))
    return np.asarray(np.degrees(np.arcsin(np.clip(ex * up[0] + ey * up[1] + sun[:, 2] * up[2], -1.0, 1.0))))


def teme_positions(satrec: Satrec, unix: Floats) -> Floats:
    """SGP4's TEME positions (km) at many moments, shape (n, 3); NaN rows where SGP4 reports an error."""
    unix = np.asarray(unix, dtype=np.float64)
    out = np.empty((len(unix), 3))
    jd, fr = julian(unix)
    for begin in range(0, len(unix), CHUNK):
        end = begin + CHUNK
        error, r, _ = satrec.sgp4_array(jd[begin:end], fr[begin:end])
        r[error != 0] = np.nan
        out[begin:end] = r
        time.sleep(0)  # let a waiting thread (the event loop) have the GIL
    return out


def shifted_and_turned(satrec: Satrec, shift_s: float, rotation: Matrix | None) -> TemePositions:
    """The positions of the elements propagated at `t + shift_s`, turned by `rotation` (anchor.Anchor.teme)."""
    matrix = None if rotation is None else np.array(rotation, dtype=np.float64)

    def positions(unix: Floats) -> Floats:
        r = teme_positions(satrec, np.asarray(unix, dtype=np.float64) + shift_s)
        return r if matrix is None else r @ matrix.T

    return positions
