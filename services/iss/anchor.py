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


def anchor(elements: Elements, fix: Fix) -> Anchor:
    """Find the time shift (within half an orbit) that puts the propagated track on the fix."""
    agreement = _distance_at(elements, fix, 0.0)
    recent = abs(elements.age_days(fix.measured_at)) <= TRUST_AGE_DAYS
    if recent and agreement <= TRUST_KM:
        return Anchor(fix, elements, 0.0, agreement, agreement)
    # Along-track error dominates as elements age, so search time, not space: coarse, then fine.
    best_s, best_d = 0.0, agreement
    for step in range(-_HALF_ORBIT_S, _HALF_ORBIT_S + 1, _COARSE_STEP_S):
        distance = _distance_at(elements, fix, float(step))
        if distance < best_d:
            best_s, best_d = float(step), distance
    low, high = best_s - _COARSE_STEP_S, best_s + _COARSE_STEP_S
    ratio = 0.6180339887498949
    for _ in range(30):
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
