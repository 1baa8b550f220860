"""The questions people ask about the station, answered from what the tracker knows.

One place for /iss/passes, /iss/crew, the built-in responder and the tools the layer runs for a
model: each answer is plain JSON-able data with its source and how good it is.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from services.common.bounded_work import BoundedWork, QueueFull
from services.common.errors import ApiError
from services.common.iso_time import iso_z
from services.iss.estimate import ORBIT_SPEED_KMS, OrbitModel
from services.iss.passes import DEFAULT_MIN_ELEVATION, MAX_DAYS, Pass, find_passes, pass_dict
from services.iss.places import Observer, PlaceError, Places
from services.iss.state import IssState, Tracker

MAX_PASSES = 20
MAX_OFFSET = timedelta(days=1)
CACHE_SIZE = 256
CACHE_SECONDS = 300.0
# Searches are made for the place rounded to this many degrees (0.1°: about 11 km, a second or two
# of pass time), so nearby callers share one result.
PLACE_DECIMALS = 1

_SearchKey = tuple[Any, ...]


@dataclass
class _Search:
    """One search in flight and how many callers wait for it."""

    task: asyncio.Future[list[Pass]]
    callers: int = 0


def _retrieved(task: asyncio.Future[list[Pass]]) -> None:
    """A search's failure is read here too: when every caller left, no one else would."""
    if not task.cancelled():
        task.exception()


class IssQueries:
    """Position at a moment, passes over a place, the crew: from the tracker, never from the network."""

    def __init__(self, tracker: Tracker, places: Places | None = None, searches: BoundedWork | None = None) -> None:
        self.tracker = tracker
        self.places = places or Places()
        # Every pass search (the endpoint's and the tools') waits its turn here: one small queue per process.
        self.searches = searches or BoundedWork(running=2, waiting=8, name="pass-search")
        self._passes_cache: OrderedDict[_SearchKey, tuple[float, list[Pass]]] = OrderedDict()
        self._in_flight: dict[_SearchKey, _Search] = {}

    async def close(self) -> None:
        """End the searches in flight (their threads finish on their own) and the queue."""
        tasks = [search.task for search in self._in_flight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.searches.close()

    # ---- where ----

    async def position(self, at: datetime | None = None) -> IssState:
        """The state now, or at `at` (within a day); ApiError(503) when nothing is known."""
        if at is None:
            state = await self.tracker.current()
        else:
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            if abs(at - datetime.now(UTC)) > MAX_OFFSET:
                raise ApiError(400, "'at' must be within one day of now.", param="at")
            state = self.tracker.state_at(at)
        if state is None:
            raise ApiError(503, "The ISS position is unavailable: no source answered and no orbital elements "
                           "are known.", type="server_error", code="iss_unavailable")
        return state

    # ---- passes ----

    def observer(self, place: str | None, latitude: float | None = None, longitude: float | None = None) -> Observer:
        """The place named, or the coordinates given; ApiError(400) naming the bad parameter."""
        try:
            if place:
                return self.places.find(place)
            if latitude is None or longitude is None:
                raise ApiError(400, "Give 'place' (a city, e.g. 'Paris, France') or both 'lat' and 'lon'.",
                               param="place")
            return self.places.at(latitude, longitude)
        except PlaceError as exc:
            param = "place" if place else ("lat" if "Latitude" in str(exc) else "lon")
            raise ApiError(400, str(exc), param=param, code="unknown_place" if place else "invalid_value") from None

    async def passes(
        self, observer: Observer, *, days: float = 3.0, min_elevation: float = DEFAULT_MIN_ELEVATION,
        visible_only: bool = False, limit: int = 5, start: datetime | None = None,
    ) -> dict[str, Any]:
        """The next passes over `observer` (searched in a worker thread, a few ms for 10 days, or cached)."""
        if not (math.isfinite(days) and 0 < days <= MAX_DAYS):
            raise ApiError(400, f"'days' must be a number above 0 and at most {MAX_DAYS:g}.", param="days")
        if not (math.isfinite(min_elevation) and 0 <= min_elevation <= 80):
            raise ApiError(400, "'min_elevation' must be a number from 0 to 80 (degrees).", param="min_elevation")
        limit = max(1, min(limit, MAX_PASSES))
        orbit = self.tracker.orbit()
        if orbit is None:
            raise ApiError(503, "Passes are unavailable: no orbital elements are known.", type="server_error",
                           code="iss_unavailable")
        # Whole seconds, like every time a pass gives: the request's microseconds are no one's business.
        start = (start or datetime.now(UTC)).replace(microsecond=0)
        found = await self._found(orbit, observer, start, days, min_elevation)
        shown = [item for item in found if item.visible or not visible_only][:limit]
        timing = [orbit.error_km(item.culmination) / ORBIT_SPEED_KMS for item in shown]
        return {
            "place": {
                "name": observer.name, "latitude": observer.latitude, "longitude": observer.longitude,
                "timezone": observer.timezone,
            },
            "from": iso_z(start),
            "days": days,
            "min_elevation_deg": min_elevation,
            "passes": [
                {**pass_dict(item, observer), "timing_uncertainty_seconds": round(seconds)}
                for item, seconds in zip(shown, timing, strict=True)
            ],
            "visible_count": sum(1 for item in found if item.visible),
            "basis": orbit.basis,
            "visible_means": "the observer is in darkness (Sun 6° or more below the horizon) and the station "
                             "is in sunlight, above the minimum elevation",
        }

    async def _found(
        self, orbit: OrbitModel, observer: Observer, start: datetime, days: float, min_elevation: float,
    ) -> list[Pass]:
        """The passes from `start`: cached per element set, rounded place and parameters (for
        CACHE_SECONDS, least recently used first out); one search for callers asking the same at
        once, given up when they all leave; else a new search through the bounded queue (ApiError 503
        when it is full)."""
        place = replace(observer, latitude=round(observer.latitude, PLACE_DECIMALS),
                        longitude=round(observer.longitude, PLACE_DECIMALS))
        key = (orbit.key, place.latitude, place.longitude, days, min_elevation)
        now = asyncio.get_running_loop().time()
        cached = self._passes_cache.get(key)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            self._passes_cache.move_to_end(key)
            return [item for item in cached[1] if item.set > start]
        search = self._in_flight.get(key)
        if search is None:
            job = partial(find_passes, orbit.positions, place, start, days, min_elevation, MAX_PASSES * 3)
            search = _Search(asyncio.ensure_future(self._search(key, job)))
            search.task.add_done_callback(_retrieved)
            self._in_flight[key] = search
        search.callers += 1
        try:
            # Shielded: one caller leaving does not end the search the others wait for...
            found = await asyncio.shield(search.task)
        finally:
            search.callers -= 1
            if search.callers == 0 and not search.task.done():
                # ...but when every one left, it is given up (never run if it still waited its turn).
                search.task.cancel()
        return [item for item in found if item.set > start]

    async def _search(self, key: _SearchKey, search: partial[list[Pass]]) -> list[Pass]:
        try:
            found = await self.searches.run(search)
        except QueueFull as full:
            raise ApiError(503, "Too many pass searches are running; try again in a moment.", type="server_error",
                           code="pass_search_busy", retry_after=full.retry_after) from None
        finally:
            self._in_flight.pop(key, None)
        self._passes_cache[key] = (asyncio.get_running_loop().time(), found)
        self._passes_cache.move_to_end(key)
        while len(self._passes_cache) > CACHE_SIZE:
            self._passes_cache.popitem(last=False)
        return found

    # ---- who ----

    def crew(self) -> dict[str, Any]:
        """Who is aboard, as Open Notify last said, with its age; `known` False when never fetched."""
        crew = self.tracker.crew()
        if crew is None:
            return {"known": False, "count": None, "names": [], "source": None, "fetched_at": None,
                    "age_seconds": None}
        return {
            "known": True, "count": len(crew.names), "names": list(crew.names), "source": crew.source,
            "fetched_at": iso_z(crew.fetched_at),
            "age_seconds": round((datetime.now(UTC) - crew.fetched_at).total_seconds()),
            "note": "Open Notify's list is kept by hand and can lag a crew change by days",
        }
