"""SGP4 propagation to geodetic latitude, longitude, altitude and speed, plus the Sun's geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sgp4.api import Satrec

_WGS84_A = 6378.137
_WGS84_F = 1 / 298.257223563
_WGS84_E2 = _WGS84_F * (2 - _WGS84_F)
_EARTH_RADIUS_KM = 6371.0
_UNIX_JD = 2440587.5
_DEG = math.pi / 180.0


class PropagationError(RuntimeError):
    """SGP4 could not propagate the elements to the requested time."""


@dataclass(frozen=True)
class OrbitPoint:
    """Where the elements put the station at one moment."""

    latitude: float
    longitude: float
    altitude_km: float
    speed_kmh: float
    sunlit: bool


def julian(when: datetime) -> tuple[float, float]:
    """The (whole, fraction) Julian date of an aware datetime, split for precision."""
    seconds = when.timestamp()
    days, remainder = divmod(seconds, 86400.0)
    return _UNIX_JD + days, remainder / 86400.0


def gmst(jd: float, fr: float) -> float:
    """Greenwich mean sidereal time (IAU 1982) in radians, the angle TEME is rotated by."""
    t = (jd - 2451545.0 + fr) / 36525.0
    seconds = (
        67310.54841
        + (876600.0 * 3600.0 + 8640184.812866) * t
        + 0.093104 * t * t
        - 6.2e-6 * t * t * t
    )
    return (seconds % 86400.0) / 240.0 * _DEG


def geodetic(x: float, y: float, z: float) -> tuple[float, float, float]:
    """Earth-fixed km to WGS84 (latitude°, longitude°, height km)."""
    lon = math.atan2(y, x)
    p = math.hypot(x, y)
    lat = math.atan2(z, p * (1 - _WGS84_E2))
    height = 0.0
    for _ in range(5):
        sin_lat = math.sin(lat)
        n = _WGS84_A / math.sqrt(1 - _WGS84_E2 * sin_lat * sin_lat)
        height = p / math.cos(lat) - n
        lat = math.atan2(z, p * (1 - _WGS84_E2 * n / (n + height)))
    return lat / _DEG, lon / _DEG, height


def sun_direction(jd: float, fr: float) -> tuple[float, float, float]:
    """Unit vector to the Sun in the equatorial frame of date (Astronomical Almanac, ~0.01°)."""
    n = jd - 2451545.0 + fr
    mean_lon = (280.460 + 0.9856474 * n) % 360.0
    anomaly = (357.528 + 0.9856003 * n) % 360.0 * _DEG
    ecliptic_lon = (mean_lon + 1.915 * math.sin(anomaly) + 0.020 * math.sin(2 * anomaly)) * _DEG
    obliquity = (23.439 - 0.0000004 * n) * _DEG
    return (
        math.cos(ecliptic_lon),
        math.cos(obliquity) * math.sin(ecliptic_lon),
        math.sin(obliquity) * math.sin(ecliptic_lon),
    )


def in_sunlight(r: tuple[float, float, float], sun: tuple[float, float, float]) -> bool:
    """Cylindrical shadow model: sunlit unless behind Earth and within its radius of the axis."""
    along = r[0] * sun[0] + r[1] * sun[1] + r[2] * sun[2]
    if along >= 0:
        return True
    perp2 = r[0] ** 2 + r[1] ** 2 + r[2] ** 2 - along * along
    return perp2 > _EARTH_RADIUS_KM**2


def ground_in_daylight(latitude: float, longitude: float, when: datetime) -> bool:
    """Whether the Sun is above the horizon (upper limb, with refraction) at that ground point."""
    return sun_elevation_deg(latitude, longitude, when) > -0.833


Vector = tuple[float, float, float]
Matrix = tuple[Vector, Vector, Vector]
IDENTITY: Matrix = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def teme_state(satrec: Satrec, when: datetime) -> tuple[Vector, Vector]:
    """SGP4's position (km) and velocity (km/s) in its TEME frame at `when`."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    jd, fr = julian(when)
    error, r, v = satrec.sgp4(jd, fr)
    if error:
        raise PropagationError(f"sgp4 error {error}")
    return r, v


def point_from_teme(r: Vector, v: Vector, when: datetime) -> OrbitPoint:
    """Geodetic position, height, orbital speed and sunlight of a TEME state at `when`."""
    jd, fr = julian(when)
    theta = gmst(jd, fr)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    x = cos_t * r[0] + sin_t * r[1]
    y = -sin_t * r[0] + cos_t * r[1]
    z = r[2]
    lat, lon, height = geodetic(x, y, z)
    # The orbital (inertial) speed, about 27,600 km/h: what NASA and wheretheiss.at quote. (Relative
    # to the rotating Earth it is about 1,000 km/h less; no source a viewer can check gives that.)
    speed_kmh = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) * 3600.0
    sunlit = in_sunlight(r, sun_direction(jd, fr))
    return OrbitPoint(lat, lon, height, speed_kmh, sunlit)


def propagate(satrec: Satrec, when: datetime) -> OrbitPoint:
    """The station's geodetic position, height, orbital speed and sunlight at `when`."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    r, v = teme_state(satrec, when)
    return point_from_teme(r, v, when)


def earth_fixed(latitude: float, longitude: float, height_km: float) -> Vector:
    """WGS84 geodetic to Earth-fixed km."""
    lat, lon = latitude * _DEG, longitude * _DEG
    sin_lat = math.sin(lat)
    n = _WGS84_A / math.sqrt(1 - _WGS84_E2 * sin_lat * sin_lat)
    return (
        (n + height_km) * math.cos(lat) * math.cos(lon),
        (n + height_km) * math.cos(lat) * math.sin(lon),
        (n * (1 - _WGS84_E2) + height_km) * sin_lat,
    )


def teme_from_geodetic(latitude: float, longitude: float, height_km: float, when: datetime) -> Vector:
    """Where a geodetic point is in the TEME frame at `when` (the inverse of point_from_teme's rotation)."""
    x, y, z = earth_fixed(latitude, longitude, height_km)
    theta = gmst(*julian(when))
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    return (cos_t * x - sin_t * y, sin_t * x + cos_t * y, z)


def rotation_between(a: Vector, b: Vector) -> Matrix:
    """The smallest rotation that turns direction `a` onto direction `b` (Rodrigues' formula)."""
    na, nb = _norm(a), _norm(b)
    ua = (a[0] / na, a[1] / na, a[2] / na)
    ub = (b[0] / nb, b[1] / nb, b[2] / nb)
    kx, ky, kz = ua[1] * ub[2] - ua[2] * ub[1], ua[2] * ub[0] - ua[0] * ub[2], ua[0] * ub[1] - ua[1] * ub[0]
    sin_a = math.sqrt(kx * kx + ky * ky + kz * kz)
    cos_a = ua[0] * ub[0] + ua[1] * ub[1] + ua[2] * ub[2]
    if sin_a < 1e-12:
        return IDENTITY
    return _rodrigues((kx / sin_a, ky / sin_a, kz / sin_a), cos_a, sin_a)


def rotation_about(axis: Vector, degrees: float) -> Matrix:
    """The rotation by `degrees` about `axis` (right-handed)."""
    n = _norm(axis)
    angle = degrees * _DEG
    return _rodrigues((axis[0] / n, axis[1] / n, axis[2] / n), math.cos(angle), math.sin(angle))


def _rodrigues(k: Vector, c: float, s: float) -> Matrix:
    """The rotation about unit axis `k` by the angle whose cosine and sine are `c` and `s`."""
    kx, ky, kz = k
    c1 = 1 - c
    return (
        (c + kx * kx * c1, kx * ky * c1 - kz * s, kx * kz * c1 + ky * s),
        (ky * kx * c1 + kz * s, c + ky * ky * c1, ky * kz * c1 - kx * s),
        (kz * kx * c1 - ky * s, kz * ky * c1 + kx * s, c + kz * kz * c1),
    )


def rotate(m: Matrix, v: Vector) -> Vector:
    return (
        m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
        m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
        m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2],
    )


def _norm(v: Vector) -> float:
    return math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def sun_elevation_deg(latitude: float, longitude: float, when: datetime) -> float:
    """The Sun's geometric elevation (degrees) seen from a ground point at `when`."""
    jd, fr = julian(when)
    sx, sy, sz = sun_direction(jd, fr)
    theta = gmst(jd, fr)
    # The Sun's direction rotated into the Earth-fixed frame, then dotted with the local vertical.
    ex = sx * math.cos(theta) + sy * math.sin(theta)
    ey = -sx * math.sin(theta) + sy * math.cos(theta)
    lat, lon = latitude * _DEG, longitude * _DEG
    up = (math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat))
    return math.asin(max(-1.0, min(1.0, ex * up[0] + ey * up[1] + sz * up[2]))) / _DEG


def ground_distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a spherical Earth (haversine)."""
    p1, p2 = lat1 * _DEG, lat2 * _DEG
    dp, dl = p2 - p1, (lon2 - lon1) * _DEG
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north."""
    p1, p2 = lat1 * _DEG, lat2 * _DEG
    dl = (lon2 - lon1) * _DEG
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.atan2(y, x) / _DEG) % 360.0
