"""Line an element set up with a live fix: the along-track time shift that best matches it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from services.iss.orbit import ground_distance_km, propagate
from services.iss.sources import Fix
from services.iss.tle import Elements

# Within this agreement, recent elements are trusted as they are (Open Notify's 1 s timestamps
# alone allow ~8 km of disagreement).
TRUST_KM = 30.0
TRUST_AGE_DAYS = 3.0
_HALF_ORBIT_S = 2900
_COARSE_STEP_S = 60


@dataclass(frozen=True)
class Anchor:
    """Propagate the elements at `t + shift_s` to follow the fix; `residual_km` is what remains."""

    fix: Fix
    elements: Elements
    shift_s: float
    residual_km: float
    agreement_km: float


def _distance_at(elements: Elements, fix: Fix, shift_s: float) -> float:
    point = propagate(elements.satrec, fix.measured_at + timedelta(seconds=shift_s))
    return ground_distance_km(point.latitude, point.longitude, fix.latitude, fix.longitude)


def anchor(elements: Elements, fix: Fix, hint_s: float | None = None) -> Anchor:
    """Find the time shift (within half an orbit) that puts the propagated track on the fix.

    `hint_s`, the shift found for the previous fix, narrows the search to a few minutes around
    it; the full half-orbit search runs only when that does not line up.
    """
    agreement = _distance_at(elements, fix, 0.0)
    recent = abs(elements.age_days(fix.measured_at)) <= TRUST_AGE_DAYS
    if recent and agreement <= TRUST_KM:
        return Anchor(fix, elements, 0.0, agreement, agreement)
    if hint_s is not None:
        found = _search(elements, fix, hint_s, 180, 30, agreement)
        if found.residual_km <= TRUST_KM:
            return found
    return _search(elements, fix, 0.0, _HALF_ORBIT_S, _COARSE_STEP_S, agreement)


def _search(elements: Elements, fix: Fix, centre: float, half: int, step: int, agreement: float) -> Anchor:
    # Along-track error dominates as elements age, so search time, not space: coarse, then fine.
    best_s, best_d = 0.0, agreement
    for offset in range(-half, half + 1, step):
        distance = _distance_at(elements, fix, centre + offset)
        if distance < best_d:
            best_s, best_d = centre + offset, distance
    low, high = best_s - step, best_s + step
    ratio = 0.6180339887498949
    for _ in range(24):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if _distance_at(elements, fix, a) < _distance_at(elements, fix, b):
            high = b
        else:
            low = a
    shift = (low + high) / 2
    residual = _distance_at(elements, fix, shift)
    if residual >= best_d:
        shift, residual = best_s, best_d
    return Anchor(fix, elements, shift, residual, agreement)
