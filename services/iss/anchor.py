"""Line an element set up with a live fix: the fix is the truth at its time, the elements give the motion.

First the along-track time shift that brings the propagated track closest to the fix (old elements
are mostly late or early along their orbit); then the small rotation that carries the shifted
model's point exactly onto the fix. A state at another moment is the model's state then, turned by
that rotation: the fix moved on by the model's own displacement, so the error is the model's drift
over the time since the fix, not its absolute offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from services.iss.orbit import (
    IDENTITY,
    Matrix,
    OrbitPoint,
    Vector,
    ground_distance_km,
    point_from_teme,
    propagate,
    rotate,
    rotation_between,
    teme_from_geodetic,
    teme_state,
)
from services.iss.sources import Fix
from services.iss.tle import Elements

# Within this agreement, recent elements are trusted as they are (Open Notify's 1 s timestamps
# alone allow ~8 km of disagreement).
TRUST_KM = 30.0
TRUST_AGE_DAYS = 3.0
_HALF_ORBIT_S = 2900
_COARSE_STEP_S = 60
_EARTH_RADIUS_KM = 6371.0
# Two fixes from one source this far apart give the direction of its track.
PAIR_MIN_S = 2.0
PAIR_MAX_S = 900.0
# Past this residual (about 7° of arc), no shift of the model's orbit comes near the fix: a plane
# error that large is no element set of the ISS.
UNREACHABLE_KM = 800.0


@dataclass(frozen=True)
class Anchor:
    """Propagate the elements at `t + shift_s` and turn by `rotation` to follow the fix.

    `agreement_km` is how far the elements alone put the station from the fix at its time;
    `residual_km` what the time shift leaves, which the rotation then removes.
    """

    fix: Fix
    elements: Elements
    shift_s: float
    residual_km: float
    agreement_km: float
    rotation: Matrix = IDENTITY
    # The model's orbit never comes near the fix and no second fix shows the source's direction:
    # the model's motion would be a guess, so the fix is held where it was measured.
    held: bool = False
    # A second fix from the same source turned the model onto the source's own track. Without one,
    # the heading is the model's: a plane error at the fix shows no distance where the two planes
    # cross, yet the model's track leaves the real one from there (see plane_error_km).
    paired: bool = False

    def plane_error_km(self) -> float:
        """How far the model's orbit plane may be turned from the real one, as arc on the ground.

        With a second fix the source's track is followed and the residual is what is left. With one
        fix the residual only bounds the turn from below (it is zero where the planes cross): the
        turn may be as large as what recent elements can be off by, or, for older ones, as large as
        an anchor accepts at all (UNREACHABLE_KM).
        """
        if self.paired:
            return self.residual_km
        recent = abs(self.elements.age_days(self.fix.measured_at)) <= TRUST_AGE_DAYS
        return max(self.residual_km, TRUST_KM if recent else UNREACHABLE_KM)

    def teme(self, when: datetime) -> tuple[Vector, Vector]:
        """The anchored TEME position and velocity at `when`."""
        r, v = teme_state(self.elements.satrec, when + timedelta(seconds=self.shift_s))
        if self.rotation is IDENTITY:
            return r, v
        return rotate(self.rotation, r), rotate(self.rotation, v)

    def point(self, when: datetime) -> OrbitPoint:
        """The fix moved on (or back) to `when` by the model's own motion."""
        r, v = self.teme(when)
        point = point_from_teme(r, v, when)
        if self.held:
            return replace(point, latitude=self.fix.latitude, longitude=self.fix.longitude)
        return point


def _fix_direction(fix: Fix) -> Vector:
    """The fix as a unit vector in the TEME frame at its own time."""
    height = fix.altitude_km if fix.altitude_km is not None else 420.0
    return _unit(teme_from_geodetic(fix.latitude, fix.longitude, height, fix.measured_at))


def _unit(v: Vector) -> Vector:
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / n, v[1] / n, v[2] / n)


def _angle_km(a: Vector, b: Vector) -> float:
    """The angle between two unit vectors as a distance on the ground."""
    d = math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)
    return 2 * math.asin(min(1.0, d / 2)) * _EARTH_RADIUS_KM


def _distance_at(elements: Elements, fix: Fix, shift_s: float, target: Vector | None = None) -> float:
    """How far the model at the fix's time + shift is from the fix, in the inertial frame.

    An element set late or early along its orbit is at the right inertial point at another time:
    the Earth turned meanwhile, so the time shift is searched in TEME, not on the ground.
    """
    r, _ = teme_state(elements.satrec, fix.measured_at + timedelta(seconds=shift_s))
    return _angle_km(_unit(r), target if target is not None else _fix_direction(fix))


def anchor(elements: Elements, fix: Fix, hint_s: float | None = None, previous: Fix | None = None) -> Anchor:
    """Find the time shift (within half an orbit) that brings the model closest to the fix, then the
    rotation that carries it exactly onto the fix (and onto `previous`, an earlier fix from the same
    source, so the orbit plane follows the source's own track).

    `hint_s`, the shift found for the previous fix, narrows the search to a few minutes around
    it; the full half-orbit search runs only when that does not line up.
    """
    return _rotated(_shifted(elements, fix, hint_s), previous)


def _shifted(elements: Elements, fix: Fix, hint_s: float | None) -> Anchor:
    point = propagate(elements.satrec, fix.measured_at)
    agreement = ground_distance_km(point.latitude, point.longitude, fix.latitude, fix.longitude)
    target = _fix_direction(fix)
    recent = abs(elements.age_days(fix.measured_at)) <= TRUST_AGE_DAYS
    if recent and agreement <= TRUST_KM:
        return Anchor(fix, elements, 0.0, _distance_at(elements, fix, 0.0, target), agreement)
    if hint_s is not None:
        found = _search(elements, fix, target, hint_s, 180, 30, agreement)
        if found.residual_km <= TRUST_KM:
            return found
    return _search(elements, fix, target, 0.0, _HALF_ORBIT_S, _COARSE_STEP_S, agreement)


def _rotated(found: Anchor, previous: Fix | None) -> Anchor:
    """The shifted model turned so that, at the fix's time, it is exactly at the fix."""
    fix, satrec, shift = found.fix, found.elements.satrec, timedelta(seconds=found.shift_s)
    r, v = teme_state(satrec, fix.measured_at + shift)
    target = _fix_direction(fix)
    rotation = _heading_kept(_unit(r), v, target)
    paired = None
    if previous is not None and _usable_pair(fix, previous):
        r0, _ = teme_state(satrec, previous.measured_at + shift)
        paired = _triad(_unit(r), _unit(r0), target, _fix_direction(previous))
    held = paired is None and found.residual_km > UNREACHABLE_KM
    return Anchor(fix, found.elements, found.shift_s, found.residual_km, found.agreement_km,
                  paired or rotation, held, paired is not None)


def _heading_kept(a: Vector, v: Vector, b: Vector) -> Matrix:
    """The rotation taking `a` onto `b` that keeps the model's compass heading there.

    One fix gives no direction of travel: of all the rotations that carry the model's point onto
    the fix, this one leaves the station flying the way the model flies it (northeast stays
    northeast), rather than whatever heading the shortest rotation happens to give.
    """
    east_a, north_a = _east_north(a)
    east_b, north_b = _east_north(b)
    if east_a is None or east_b is None:
        return rotation_between(a, b)
    ve = v[0] * east_a[0] + v[1] * east_a[1] + v[2] * east_a[2]
    vn = v[0] * north_a[0] + v[1] * north_a[1] + v[2] * north_a[2]
    w = _sum_scaled(ve, east_b, vn, north_b)
    heading_a = _sum_scaled(ve, east_a, vn, north_a)
    return _triad_matrix(_triad_axes(a, heading_a), _triad_axes(b, w))


def _sum_scaled(s: float, x: Vector, t: float, y: Vector) -> Vector:
    """s·x + t·y."""
    return (s * x[0] + t * y[0], s * x[1] + t * y[1], s * x[2] + t * y[2])


def _east_north(u: Vector) -> tuple[Vector | None, Vector]:
    east = (-u[1], u[0], 0.0)
    if math.hypot(east[0], east[1]) < 1e-9:
        return None, u
    east = _unit(east)
    north = (u[1] * east[2] - u[2] * east[1], u[2] * east[0] - u[0] * east[2], u[0] * east[1] - u[1] * east[0])
    return east, north


def _usable_pair(fix: Fix, previous: Fix) -> bool:
    span = (fix.measured_at - previous.measured_at).total_seconds()
    return previous.source == fix.source and PAIR_MIN_S <= span <= PAIR_MAX_S


def _triad(a1: Vector, a2: Vector, b1: Vector, b2: Vector) -> Matrix | None:
    """The rotation taking a1 exactly onto b1 and the plane (a1, a2) onto the plane (b1, b2).

    None when the two pairs do not span the same arc (a source that jumped, or a pair too close
    together to give a direction): the single-point rotation is the safer choice then.
    """
    arc_a = _angle_km(a1, a2)
    arc_b = _angle_km(b1, b2)
    if arc_a < 5.0 or abs(arc_a - arc_b) > 0.2 * arc_a:
        return None
    return _triad_matrix(_triad_axes(a1, a2), _triad_axes(b1, b2))


def _triad_matrix(ta: tuple[Vector, Vector, Vector], tb: tuple[Vector, Vector, Vector]) -> Matrix:
    """R = Tb · Taᵀ, with the triads' axes as columns: takes each axis of `ta` onto the same of `tb`."""

    def entry(i: int, j: int) -> float:
        return sum(tb[k][i] * ta[k][j] for k in range(3))

    return (
        (entry(0, 0), entry(0, 1), entry(0, 2)),
        (entry(1, 0), entry(1, 1), entry(1, 2)),
        (entry(2, 0), entry(2, 1), entry(2, 2)),
    )


def _triad_axes(v1: Vector, v2: Vector) -> tuple[Vector, Vector, Vector]:
    n = _unit((v1[1] * v2[2] - v1[2] * v2[1], v1[2] * v2[0] - v1[0] * v2[2], v1[0] * v2[1] - v1[1] * v2[0]))
    m = (n[1] * v1[2] - n[2] * v1[1], n[2] * v1[0] - n[0] * v1[2], n[0] * v1[1] - n[1] * v1[0])
    return v1, n, m


def _search(
    elements: Elements, fix: Fix, target: Vector, centre: float, half: int, step: int, agreement: float
) -> Anchor:
    # Along-track error dominates as elements age, so search time, not space: coarse, then fine.
    best_s, best_d = 0.0, _distance_at(elements, fix, 0.0, target)
    for offset in range(-half, half + 1, step):
        distance = _distance_at(elements, fix, centre + offset, target)
        if distance < best_d:
            best_s, best_d = centre + offset, distance
    low, high = best_s - step, best_s + step
    ratio = 0.6180339887498949
    for _ in range(24):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if _distance_at(elements, fix, a, target) < _distance_at(elements, fix, b, target):
            high = b
        else:
            low = a
    shift = (low + high) / 2
    residual = _distance_at(elements, fix, shift, target)
    if residual >= best_d:
        shift, residual = best_s, best_d
    return Anchor(fix, elements, shift, residual, agreement)
