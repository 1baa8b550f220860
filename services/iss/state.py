"""What the chat path, /iss and the console know about the station at one moment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from services.common.iso_time import iso_z

if TYPE_CHECKING:
    from services.iss.crew import Crew
    from services.iss.estimate import OrbitModel


@dataclass(frozen=True)
class IssState:
    """The station's state at `at`, derived from data measured at `measured_at` by `source`."""

    latitude: float
    longitude: float
    at: datetime
    measured_at: datetime
    source: str
    accuracy: str
    altitude_km: float | None = None
    speed_kmh: float | None = None  # orbital (inertial) speed, as wheretheiss.at and NASA give it
    sunlit: bool | None = None
    ground_daylight: bool | None = None
    over: str | None = None
    nearest_city: str | None = None
    nearest_city_km: float | None = None
    nearest_city_direction: str | None = None
    rough: bool = False
    accuracy_km: float | None = None
    over_water: bool | None = None

    @property
    def age_seconds(self) -> float:
        return (self.at - self.measured_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar: a shallow copy gives what asdict's deep copy would, at a fraction
        # of the cost (this runs on every chat request, for the console's record).
        data = dict(self.__dict__)
        data["at"] = iso_z(self.at)
        data["measured_at"] = iso_z(self.measured_at)
        data["age_seconds"] = round(self.age_seconds, 1)
        return data


class Tracker(Protocol):
    """The chat path's view of the ISS: never raises, never waits longer than its timeout."""

    async def start(self) -> None: ...

    async def current(self) -> IssState | None: ...

    def state_at(self, when: datetime) -> IssState | None: ...

    def track(self, start: datetime, end: datetime, step_s: float) -> list[dict[str, Any]]: ...

    def orbit(self) -> OrbitModel | None: ...

    def crew(self) -> Crew | None: ...

    def health(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...
