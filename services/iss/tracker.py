"""IssTracker: polls the ISS sources in the background and serves a state for any moment at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp

from config import Settings
from services.common.iso_time import iso_z
from services.iss import estimate
from services.iss.accuracy import elements_error_km
from services.iss.anchor import Anchor, anchor
from services.iss.crew import Crew, CrewSource
from services.iss.estimate import LIVE_HOLD, Located, OrbitModel
from services.iss.feed import IssFeed, SelfPolling
from services.iss.geography import Geography
from services.iss.sources import (
    CelestrakSource,
    Fix,
    LiveSource,
    SourceError,
    describe_error,
    open_notify,
    wheretheiss,
)
from services.iss.state import IssState
from services.iss.tle import Elements, TleError, load_tle_file

log = logging.getLogger("iss_llm.iss")

ENRICH_INTERVAL = 1.0
FEED_RECHECK_S = 5.0
PAIR_RENEW_S = 60.0
MAX_TRACK_POINTS = 600
# Fresh CelesTrak elements are already good to a few km: a cold caller need not wait for more.
GOOD_ELEMENTS_KM = 10.0


class _DueSource(Protocol):
    def seconds_until_due(self) -> float: ...


class IssTracker:
    """The chat path's ISS: never raises, serves at once in steady state, waits at most iss_timeout cold."""

    def __init__(self, settings: Settings, geography: Any | None = None, feed: IssFeed | None = None) -> None:
        self.settings = settings
        # Whether to poll, and who hears of what was fetched: the cluster's lease, or no one (issue 11).
        self.feed: IssFeed = feed or SelfPolling()
        self._live: list[LiveSource] = []
        self._celestrak: CelestrakSource | None = None
        self._crew_source: CrewSource | None = None
        for name in settings.iss_sources:
            if name == "open-notify":
                self._live.append(open_notify(settings.iss_api_url, settings.iss_timeout))
            elif name == "wheretheiss":
                self._live.append(wheretheiss(settings.wheretheiss_url, settings.iss_timeout))
            elif name == "tle":
                self._celestrak = CelestrakSource(
                    settings.tle_url, settings.iss_timeout, settings.tle_refresh_interval,
                    settings.iss_cache_dir,
                )
            elif name == "crew":
                self._crew_source = CrewSource(
                    settings.astros_url, settings.iss_timeout, settings.crew_refresh_interval, settings.iss_cache_dir,
                )
            else:
                log.warning("ignoring unknown ISS source %r", name)
        self._bundled = self._load_bundled()
        # The freshest element set known (CelesTrak's, the bundled one, or one another worker sent).
        self._current_elements: Elements | None = None
        for candidate in (self._bundled, self._celestrak.elements if self._celestrak else None):
            if candidate is not None:
                self._choose_elements(candidate)
        self._disagreement: dict[str, Any] | None = None
        self._warned_elements: Elements | None = None
        self.geography = geography if geography is not None else Geography()
        self._geography_error: str | None = None
        self._fix: Fix | None = None
        self._previous_fix: Fix | None = None
        self._anchor: Anchor | None = None
        self._located: Located | None = None
        # The last state current() computed and what it was computed from: every request within
        # the same second shares it (an SGP4 propagation is ~0.15 ms on the chat path).
        self._memo: tuple[tuple[Any, ...], IssState | None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._warmup: asyncio.Task[Any] | None = None
        self._cold_deadline = 0.0
        self._closed = False
        self._live_first = asyncio.Event()
        self._tle_first = asyncio.Event()
        self._geo_first = asyncio.Event()
        self.cycles = 0
        self.tle_cycles = 0

    def _load_bundled(self) -> Elements | None:
        if self.settings.bundled_tle is None:
            return None
        try:
            return load_tle_file(self.settings.bundled_tle, "bundled")
        except (OSError, TleError) as exc:
            log.warning("bundled TLE unusable (%s): %s", self.settings.bundled_tle.name, describe_error(exc))
            return None

    # ---- what the chat path calls ----

    async def current(self) -> IssState | None:
        """The state now; cold callers share one warm-up bounded by iss_timeout; never raises."""
        try:
            if self._warmup is None and not self._closed:
                self._start()
            warmup = self._warmup
            if warmup is not None and not warmup.done() and not self._good_enough():
                remaining = self._cold_deadline - time.monotonic()
                if remaining > 0:
                    await asyncio.wait({warmup}, timeout=remaining)
            return self._state_now()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ISS state unavailable: %s", describe_error(exc))
            return None

    async def start(self) -> None:
        """Optional: begin the background refresh now rather than on the first current()."""
        if self._warmup is None and not self._closed:
            self._start()

    def state_at(self, when: datetime) -> IssState | None:
        """The propagated state at `when` (for /iss?at=); None when no orbit model is known."""
        try:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            if self._elements() is None:
                return None  # a live fix alone says where the station was, not where it is at `when`
            return self._state(when, lookup=True)
        except Exception as exc:
            log.warning("ISS state at a time unavailable: %s", describe_error(exc))
            return None

    def track(self, start: datetime, end: datetime, step_s: float) -> list[dict[str, Any]]:
        """Ground-track points (latitude, longitude, at) from start to end, at most 600 of them."""
        orbit = self.orbit()
        if orbit is None or step_s <= 0 or end < start:
            return []
        count = min(MAX_TRACK_POINTS, int((end - start).total_seconds() // step_s) + 1)
        points = []
        for index in range(count):
            when = start + timedelta(seconds=index * step_s)
            point = orbit.point(when)
            points.append({
                "latitude": round(point.latitude, 4),
                "longitude": round(point.longitude, 4),
                "at": iso_z(when),
            })
        return points

    def health(self) -> dict[str, Any]:
        """Per-source health, the model in use and its age; JSON-able."""
        now = datetime.now(UTC)
        sources: dict[str, Any] = {source.name: source.health.to_dict() for source in self._live}
        if self._celestrak is not None:
            tle = self._celestrak.health.to_dict()
            tle["next_fetch_in_seconds"] = round(self._celestrak.seconds_until_due(), 1)
            tle["format"] = self._celestrak.format
            sources["celestrak"] = tle
        if self._crew_source is not None:
            crew = self._crew_source.health.to_dict()
            crew["next_fetch_in_seconds"] = round(self._crew_source.seconds_until_due(), 1)
            sources["astros"] = crew
        elements = self._elements()
        fix = self._fix
        state = None
        try:
            state = self._state(now)
        except Exception as exc:
            log.warning("ISS health estimate failed: %s", describe_error(exc))
        return {
            "status": self._status(now),
            "started": self._warmup is not None,
            "cycles": self.cycles,
            "source": state.source if state else None,
            "accuracy_km": state.accuracy_km if state else None,
            "fix": None if fix is None else {
                "source": fix.source,
                "measured_at": iso_z(fix.measured_at),
                "age_seconds": round((now - fix.measured_at).total_seconds(), 1),
            },
            "elements": None if elements is None else {
                "origin": elements.origin,
                "epoch": iso_z(elements.epoch),
                "age_days": round(elements.age_days(now), 2),
            },
            "anchor": None if self._anchor is None else {
                "shift_seconds": round(self._anchor.shift_s, 1),
                "residual_km": round(self._anchor.residual_km, 1),
                "agreement_km": round(self._anchor.agreement_km, 1),
            },
            "model_disagreement": self._disagreement,
            "sources": sources,
            "geography": {
                "loaded": bool(getattr(self.geography, "loaded", False)),
                "error": self._geography_error,
            },
        }

    async def close(self) -> None:
        """Cancel the background loops and close the HTTP session."""
        self._closed = True
        tasks = [*self._tasks, *([self._warmup] if self._warmup else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the model ----

    def _elements(self) -> Elements | None:
        return self._current_elements

    def orbit(self) -> OrbitModel | None:
        """Where the station is at any moment: the anchored model while a live fix holds, else the elements."""
        elements = self._elements()
        if elements is None:
            return None
        anchor_, fix = self._anchor, self._fix
        live = _live(fix, datetime.now(UTC))
        if live and anchor_ is not None and anchor_.fix is fix and anchor_.elements is elements:
            return estimate.anchored_model(anchor_)
        return estimate.elements_model(elements, datetime.now(UTC))

    def crew(self) -> Crew | None:
        """Who is aboard, as last fetched (or cached); never waits."""
        return self._crew_source.value if self._crew_source is not None else None

    def elements(self) -> Elements | None:
        """The element set in use (the freshest known)."""
        return self._elements()

    def _state_now(self) -> IssState | None:
        """The state at this whole second, computed once per second and per change of the data it comes from."""
        now = datetime.now(UTC)
        fix = self._fix
        live = _live(fix, now)
        # The place (self._located, looked up again every second) is left out: a state keeps the
        # place it was computed with until the next second, rather than being computed twice a second.
        key = (_whole_second(now), live, self._elements(), fix, self._anchor)
        memo = self._memo
        if memo is not None and memo[0][:2] == key[:2] and all(
            a is b for a, b in zip(memo[0][2:], key[2:], strict=True)  # the same objects, not equal ones
        ):
            return memo[1]
        state = self._state(key[0])
        self._memo = (key, state)
        return state

    def _state(self, when: datetime, lookup: bool = False) -> IssState | None:
        elements = self._elements()
        located = self._located
        if lookup:
            located = None
        fix, anchor_ = self._fix, self._anchor
        # A fix that is recent now steers the model for any requested moment (?at= included);
        # the accuracy grows with the distance in time from the fix.
        live = _live(fix, datetime.now(UTC))
        if live and anchor_ is not None and anchor_.fix is fix and anchor_.elements is elements:
            state = estimate.anchored_state(when, anchor_, located)
        elif elements is not None:
            state = estimate.elements_state(when, elements, located)
        elif live and fix is not None:
            state = estimate.fix_state(fix, located)
        else:
            return None
        if lookup:
            state = self._with_place(state)
        return state

    def _with_place(self, state: IssState) -> IssState:
        place = self._lookup(state.latitude, state.longitude)
        if place is None:
            return state
        located = Located(state.latitude, state.longitude, place)
        if state.source.endswith("-tle"):
            elements = self._elements()
            if elements is not None:
                return estimate.elements_state(state.at, elements, located)
        if self._anchor is not None and state.source == self._anchor.fix.source:
            return estimate.anchored_state(state.at, self._anchor, located)
        return state

    def _lookup(self, latitude: float, longitude: float) -> Any:
        if not getattr(self.geography, "loaded", False):
            return None
        return self.geography.lookup(latitude, longitude)

    def _good_enough(self) -> bool:
        elements = self._elements()
        if elements is None or elements.origin != "celestrak":
            return False
        return elements_error_km(elements.age_days(datetime.now(UTC))) <= GOOD_ELEMENTS_KM

    def _status(self, now: datetime) -> str:
        fix = self._fix
        if _live(fix, now):
            return "live"
        if self._elements() is not None:
            return "propagating"
        return "unavailable"

    # ---- what arrives (from this process's polls, or published by the worker that polls) ----

    def fix_arrived(self, fix: Fix) -> None:
        """A live fix: it becomes the truth at its time, and the model is lined up with it."""
        # An earlier fix from the same source, a few seconds back at least, gives the track's direction.
        # It is renewed once a minute, so the pair spans tens of seconds and stays recent.
        current, previous = self._fix, self._previous_fix
        if current is None or current.source != fix.source:
            previous = None
        elif previous is None or previous.source != fix.source or (
            fix.measured_at - previous.measured_at
        ).total_seconds() > PAIR_RENEW_S:
            previous = current
        self._previous_fix = previous
        self._fix = fix
        self._reanchor()

    def elements_arrived(self, elements: Elements) -> bool:
        """An element set: used at once when fresher than the one in use; returns whether it was."""
        if not self._choose_elements(elements):
            return False
        self._reanchor()
        return True

    def _choose_elements(self, elements: Elements) -> bool:
        current = self._current_elements
        # Fresher means a later epoch; at the same epoch, fetched elements replace the shipped ones.
        if current is not None and (elements.epoch, elements.origin != "bundled") <= (
            current.epoch, current.origin != "bundled"
        ):
            return False
        self._current_elements = elements
        return True

    def _reanchor(self) -> None:
        fix, elements = self._fix, self._elements()
        if fix is None or elements is None:
            self._anchor = None
            return
        previous = self._anchor
        hint = previous.shift_s if previous is not None and previous.elements is elements else None
        try:
            self._anchor = anchor(elements, fix, hint, self._previous_fix)
        except Exception as exc:
            log.warning("could not line the orbit up with the %s fix: %s", fix.source, describe_error(exc))
            self._anchor = None
            return
        self._check_agreement(self._anchor)

    def _check_agreement(self, anchor_: Anchor) -> None:
        """Model and fix disagreeing by more than the fix's own error: say so, with the figure, once."""
        elements = anchor_.elements
        if anchor_.agreement_km <= estimate.FIX_ERROR_KM:
            if self._disagreement is not None:
                log.info("ISS orbital elements agree with the %s fix again (%.1f km)",
                         anchor_.fix.source, anchor_.agreement_km)
            self._disagreement = None
            return
        age_days = elements.age_days(anchor_.fix.measured_at)
        self._disagreement = {
            "km": round(anchor_.agreement_km, 1),
            "fix_source": anchor_.fix.source,
            "fix_error_km": estimate.FIX_ERROR_KM,
            "elements_origin": elements.origin,
            "elements_age_days": round(age_days, 2),
            "along_track_shift_seconds": round(anchor_.shift_s, 1),
            "note": "the live fix is used; the elements only move it on",
        }
        if self._warned_elements is not elements:
            self._warned_elements = elements
            log.warning(
                "ISS orbital elements (%s, %.1f days old) disagree with the %s fix by %.1f km "
                "(more than the fix's %.0f km): using the fix, the elements only move it on",
                elements.origin, age_days, anchor_.fix.source, anchor_.agreement_km, estimate.FIX_ERROR_KM,
            )

    # ---- background work ----

    def _start(self) -> None:
        self._cold_deadline = time.monotonic() + self.settings.iss_timeout
        self._tasks = [
            self._spawn(self._run_live),
            self._spawn(self._run_tle),
            self._spawn(self._run_geography),
            self._spawn(self._run_crew),
        ]
        self._warmup = asyncio.ensure_future(self._warm())

    def _spawn(self, body: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        return asyncio.ensure_future(body())

    async def _warm(self) -> None:
        await asyncio.gather(self._live_first.wait(), self._tle_first.wait(), self._geo_first.wait())

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No session timeout: every source bounds each of its requests with its own.
            self._session = aiohttp.ClientSession(headers={"User-Agent": "iss-llm/1.0 (ISS context for chat)"})
        return self._session

    async def _run_live(self) -> None:
        while True:
            try:
                await self._live_cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ISS refresh failed: %s", describe_error(exc))
            finally:
                self.cycles += 1
                self._live_first.set()
            await asyncio.sleep(self.settings.iss_refresh_interval)

    async def _live_cycle(self) -> None:
        """Try the live sources in order until one answers; a recent fix from a preferred one holds."""
        if not self.feed.may_poll():
            return  # another worker polls for the cluster and sends its fixes here
        for source in self._live:
            if not source.due():
                if self._fix is not None and self._fix.source == source.name and not source.health.consecutive_failures:
                    return
                continue
            try:
                fix = await source.fetch(self._http())
            except SourceError:
                continue
            self.fix_arrived(fix)
            self.feed.fetched_fix(fix)
            self._refresh_place()
            return

    async def _run_tle(self) -> None:
        celestrak = self._celestrak
        if celestrak is None:
            self._tle_first.set()
            return

        async def fetch() -> None:
            elements = await celestrak.fetch(self._http())
            self.feed.fetched_elements(elements)
            if self.elements_arrived(elements):
                self._refresh_place()

        def settled(attempted: bool) -> None:
            if attempted:
                self.tle_cycles += 1
            # Cached elements (or a recent failed attempt) mean the cold start needn't wait.
            self._tle_first.set()

        # may_fetch_elements: another worker of the cluster may fetch them (or did, recently).
        await self._refresh_when_due(celestrak, fetch, "TLE", self.feed.may_fetch_elements, settled)

    async def _run_crew(self) -> None:
        """astros.json every few hours; nobody ever waits for it (the cold start does not either)."""
        source = self._crew_source
        if source is not None:
            await self._refresh_when_due(source, lambda: source.fetch(self._http()), "crew")

    async def _refresh_when_due(
        self,
        source: _DueSource,
        fetch: Callable[[], Coroutine[Any, Any, object]],
        what: str,
        allowed: Callable[[], bool] = lambda: True,
        settled: Callable[[bool], None] = lambda attempted: None,
    ) -> None:
        """Fetch each time `source` says it is due and `allowed()` agrees (else look again in a few
        seconds); `settled(attempted)` after each wait decided on and each attempt, whatever came of it.
        A failure is logged and waits for the next due time: it never ends the loop."""
        while True:
            wait = source.seconds_until_due()
            if wait <= 0 and not allowed():
                wait = FEED_RECHECK_S
            if wait > 0:
                settled(False)
                await asyncio.sleep(min(wait, 3600.0))
                continue
            try:
                await fetch()
            except asyncio.CancelledError:
                raise
            except SourceError:
                pass  # the source recorded it (its health, its back-off)
            except Exception as exc:
                log.warning("%s refresh failed: %s", what, describe_error(exc))
            finally:
                settled(True)

    async def _run_geography(self) -> None:
        try:
            await asyncio.to_thread(self.geography.load)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._geography_error = describe_error(exc)
            log.warning("geography data unavailable: %s", self._geography_error)
            self._geo_first.set()
            return
        while True:
            try:
                self._locate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("geography lookup failed: %s", describe_error(exc))
            finally:
                self._geo_first.set()
            await asyncio.sleep(ENRICH_INTERVAL)

    def _refresh_place(self) -> None:
        """Look up the place again at once when the model jumped (new fix or elements)."""
        if getattr(self.geography, "loaded", False):
            try:
                self._locate()
            except Exception as exc:
                log.warning("geography lookup failed: %s", describe_error(exc))

    def _locate(self) -> None:
        # Look up where the station will be half an interval from now, so the cached place is
        # centred on the window in which requests will use it. A lookup takes well under a
        # millisecond: inline is cheaper than a thread hand-off that would contend for the GIL.
        state = self._state(datetime.now(UTC) + timedelta(seconds=ENRICH_INTERVAL / 2))
        if state is None:
            return
        place = self.geography.lookup(state.latitude, state.longitude)
        if place is not None:
            self._located = Located(state.latitude, state.longitude, place)


def _live(fix: Fix | None, now: datetime) -> bool:
    """Whether `fix` is recent enough at `now` to steer the model (LIVE_HOLD)."""
    return fix is not None and now - fix.measured_at <= LIVE_HOLD


def _whole_second(when: datetime) -> datetime:
    """`when` rounded to the nearest second, so the time a reader sees is the time of the position."""
    rounded = when.replace(microsecond=0)
    return rounded + timedelta(seconds=1) if when.microsecond >= 500_000 else rounded
