"""How far off a position can be, in words a model can repeat honestly."""

from __future__ import annotations

# Past this many days from their epoch, propagated elements are only a rough estimate.
ROUGH_AFTER_DAYS = 7.0


def elements_error_km(age_days: float) -> float:
    """A deliberately pessimistic error bound for SGP4 elements `age_days` from their epoch."""
    days = abs(age_days)
    if days <= 3:
        return 1.0 + 2.0 * days
    if days <= ROUGH_AFTER_DAYS:
        return 10.0 + 15.0 * (days - 3)
    # Drag and unmodelled reboosts: the along-track error grows roughly with the square of time.
    return min(20000.0, 70.0 + 20.0 * (days - ROUGH_AFTER_DAYS) ** 2)


def age_words(seconds: float) -> str:
    """'42 s', '12 min', '5 h', '48 days'."""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def round_km(km: float) -> str:
    """A distance rounded to what it's worth: '5 km', '40 km', '2,400 km'."""
    if km < 10:
        return f"{max(1, round(km))} km"
    if km < 100:
        return f"{round(km, -1):.0f} km"
    if km < 10000:
        return f"{round(km, -2):,.0f} km"
    return f"{round(km, -3):,.0f} km"
