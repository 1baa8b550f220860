"""IssTracker: the ISS state and its queries, a state for any moment at once.

It holds what the sources last brought (the fix, the element set, the model lined up with the fix,
the place below) and answers from it without waiting; services/iss/polling.py fetches in the
background and hands each result here, services/iss/health.py writes the health report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from config import Settings
from services.common.iso_time import iso_z
from services.iss import estimate
from services.iss.accuracy import elements_error_km
from services.iss.anchor import Anchor, anchor
from services.iss.crew import Crew
from services.iss.estimate import LIVE_HOLD, Located, OrbitModel
from services.iss.feed import IssFeed
from services.iss.geography import Geography, Place
from services.iss.health import health_report
from services.iss.polling import Polling, load_bundled
from services.iss.sources import Fix, describe_error
from services.iss.state import IssState
from services.iss.tle import Elements

log = logging.getLogger("iss_llm.iss")

PAIR_RENEW_S = 60.0
MAX_TRACK_POINTS = 600
# Fresh CelesTrak elements are already good to a few km: a cold caller need not wait for more.
GOOD_ELEMENTS_KM = 10.0


class IssTracker:
    """The chat path's ISS: never raises, serves at once in steady state, waits at most iss_timeout cold."""

    def __init__(self, settings: Settings, geography: Geography | None = None, feed: IssFeed | None = None) -> None:
        self.settings = settings
        self.geography = geography if geography is not None else Geography()
        self.polling = Polling(settings, self, self.geography, feed)
        # The freshest element set known (CelesTrak's, the bundled one, or one another worker sent).
        self._current_elements: Elements | None = None
        celestrak = self.polling.celestrak
        for candidate in (load_bundled(settings), celestrak.elements if celestrak else None):
            if candidate is not None:
                self._choose_elements(candidate)
        self._disagreement: dict[str, Any] | None = None
        self._warned_elements: Elements | None = None
        self._fix: Fix | None = None
        self._previous_fix: Fix | None = None
        self._anchor: Anchor | None = None
        self._located: Located | None = None
        # The last state current() computed and what it was computed from: every request within
        # the same second shares it (an SGP4 propagation is ~0.15 ms on the chat path).
        self._memo: tuple[tuple[Any, ...], IssState | None] | None = None

    # ---- what the chat path calls ----

    async def current(self) -> IssState | None:
        """The state now; cold callers share one warm-up bounded by iss_timeout; never raises."""
        try:
            self.polling.start()
            warmup = self.polling.warmup
            if warmup is not None and not warmup.done() and not self._good_enough():
                remaining = self.polling.cold_deadline - time.monotonic()
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
        self.polling.start()

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
        state = None
        try:
            state = self._state(now)
        except Exception as exc:
            log.warning("ISS health estimate failed: %s", describe_error(exc))
        return health_report(now, status=self._status(now), state=state, fix=self._fix, elements=self._elements(),
                             anchor=self._anchor, disagreement=self._disagreement, polling=self.polling)

    async def close(self) -> None:
        """Stop the background polling."""
        await self.polling.close()

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
        return self.polling.crew.value if self.polling.crew is not None else None

    @property
    def fix(self) -> Fix | None:
        """The last live fix (recent or not)."""
        return self._fix

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

    def _lookup(self, latitude: float, longitude: float) -> Place | None:
        if not self.geography.loaded:
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

    def locate(self, ahead_s: float) -> None:
        """Look up the place below the station `ahead_s` seconds from now, for the states to come.
        A lookup takes well under a millisecond: inline is cheaper than a thread hand-off."""
        state = self._state(datetime.now(UTC) + timedelta(seconds=ahead_s))
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
