"""The tracker's background work: the ISS sources built from the settings, and the loops that poll
them (live fixes, CelesTrak's elements, the crew list) and look up the place below the station.

What a poll brings goes to a `Receiver` (the tracker, which holds the state); nothing here is on
the chat path, which only ever waits (bounded) for the first round, the warm-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import aiohttp

from config import Settings
from services.iss.crew import CrewSource
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
from services.iss.tle import Elements, TleError, load_tle_file

log = logging.getLogger("iss_llm.iss")

ENRICH_INTERVAL = 1.0
FEED_RECHECK_S = 5.0


class Receiver(Protocol):
    """Where what the polls bring goes: the tracker."""

    @property
    def fix(self) -> Fix | None:
        """The fix in use (a recent one from a preferred source holds the next polls back)."""
        ...

    def fix_arrived(self, fix: Fix) -> None: ...

    def elements_arrived(self, elements: Elements) -> bool:
        """Whether the element set was taken (fresher than the one in use)."""
        ...

    def locate(self, ahead_s: float) -> None:
        """Look up the place below the station `ahead_s` seconds from now."""
        ...


class _DueSource(Protocol):
    def seconds_until_due(self) -> float: ...


def load_bundled(settings: Settings) -> Elements | None:
    """The element set shipped with the server (BUNDLED_TLE), when there is a usable one."""
    if settings.bundled_tle is None:
        return None
    try:
        return load_tle_file(settings.bundled_tle, "bundled")
    except (OSError, TleError) as exc:
        log.warning("bundled TLE unusable (%s): %s", settings.bundled_tle.name, describe_error(exc))
        return None


class Polling:
    """The sources ISS_SOURCES names and the loops that poll them, started on the first need."""

    def __init__(self, settings: Settings, receiver: Receiver, geography: Geography,
                 feed: IssFeed | None = None) -> None:
        self.settings = settings
        self.receiver = receiver
        self.geography = geography
        # Whether to poll, and who hears of what was fetched: the cluster's lease, or no one (issue 11).
        self.feed: IssFeed = feed or SelfPolling()
        self.live: list[LiveSource] = []
        self.celestrak: CelestrakSource | None = None
        self.crew: CrewSource | None = None
        for name in settings.iss_sources:
            if name == "open-notify":
                self.live.append(open_notify(settings.iss_api_url, settings.iss_timeout))
            elif name == "wheretheiss":
                self.live.append(wheretheiss(settings.wheretheiss_url, settings.iss_timeout))
            elif name == "tle":
                self.celestrak = CelestrakSource(
                    settings.tle_url, settings.iss_timeout, settings.tle_refresh_interval,
                    settings.iss_cache_dir,
                )
            elif name == "crew":
                self.crew = CrewSource(
                    settings.astros_url, settings.iss_timeout, settings.crew_refresh_interval, settings.iss_cache_dir,
                )
            else:
                log.warning("ignoring unknown ISS source %r", name)
        self.geography_error: str | None = None
        self.warmup: asyncio.Task[Any] | None = None  # the first round of every loop
        self.cold_deadline = 0.0  # how long a cold caller may wait for the warm-up
        self.closed = False
        self.cycles = 0
        self.tle_cycles = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._live_first = asyncio.Event()
        self._tle_first = asyncio.Event()
        self._geo_first = asyncio.Event()

    def start(self) -> None:
        """Begin every loop (once; never after close)."""
        if self.warmup is not None or self.closed:
            return
        self.cold_deadline = time.monotonic() + self.settings.iss_timeout
        self._tasks = [
            asyncio.ensure_future(body())
            for body in (self._run_live, self._run_tle, self._run_geography, self._run_crew)
        ]
        self.warmup = asyncio.ensure_future(self._warm())

    @property
    def loops(self) -> tuple[asyncio.Task[None], ...]:
        """The background loops, once started."""
        return tuple(self._tasks)

    def sources_health(self) -> dict[str, Any]:
        """Each source's health, by name; JSON-able."""
        sources: dict[str, Any] = {source.name: source.health.to_dict() for source in self.live}
        if self.celestrak is not None:
            tle = self.celestrak.health.to_dict()
            tle["next_fetch_in_seconds"] = round(self.celestrak.seconds_until_due(), 1)
            tle["format"] = self.celestrak.format
            sources["celestrak"] = tle
        if self.crew is not None:
            crew = self.crew.health.to_dict()
            crew["next_fetch_in_seconds"] = round(self.crew.seconds_until_due(), 1)
            sources["astros"] = crew
        return sources

    async def close(self) -> None:
        """Cancel the loops and close the HTTP session."""
        self.closed = True
        tasks: list[asyncio.Task[Any]] = [*self._tasks, *([self.warmup] if self.warmup else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        for source in self.live:
            if not source.due():
                held = self.receiver.fix
                if held is not None and held.source == source.name and not source.health.consecutive_failures:
                    return
                continue
            try:
                fix = await source.fetch(self._http())
            except SourceError:
                continue
            self.receiver.fix_arrived(fix)
            self.feed.fetched_fix(fix)
            self._refresh_place()
            return

    async def _run_tle(self) -> None:
        celestrak = self.celestrak
        if celestrak is None:
            self._tle_first.set()
            return

        async def fetch() -> None:
            elements = await celestrak.fetch(self._http())
            self.feed.fetched_elements(elements)
            if self.receiver.elements_arrived(elements):
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
        source = self.crew
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
            self.geography_error = describe_error(exc)
            log.warning("geography data unavailable: %s", self.geography_error)
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
        if self.geography.loaded:
            try:
                self._locate()
            except Exception as exc:
                log.warning("geography lookup failed: %s", describe_error(exc))

    def _locate(self) -> None:
        # Where the station will be half an interval from now, so the cached place is centred on
        # the window in which requests will use it.
        self.receiver.locate(ENRICH_INTERVAL / 2)
