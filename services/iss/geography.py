"""What lies below a point: country or ocean, and the nearest notable city (offline)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Place:
    """What is below a point, and the nearest notable city."""

    over: str | None
    city: str | None = None
    city_latitude: float | None = None
    city_longitude: float | None = None


class Geography:
    """Placeholder until the data-backed lookup lands: knows nothing, costs nothing."""

    loaded = True

    def load(self) -> None:
        """Load the data (blocking; call it in a thread)."""

    def lookup(self, latitude: float, longitude: float) -> Place | None:
        """The place below (latitude, longitude), or None when unknown."""
        return None
