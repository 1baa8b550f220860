"""The ISS data sources: Open Notify, wheretheiss.at and CelesTrak, each with its own health."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from services.common.futures import retrieve_outcome
from services.common.iso_time import iso_z
from services.iss.orbit import ground_distance_km
from services.iss.tle import Elements, TleError, parse_omm, parse_omm_json, parse_tle

log = logging.getLogger("iss_llm.iss")

# A live fix whose timestamp is this far from the local clock (either way) is not a fix of "now":
# the feed is stale, or one of the two clocks is wrong.
MAX_CLOCK_SKEW = timedelta(seconds=120)
# Between two polls at least this far apart, a feed whose timestamp did not move is frozen.
FROZEN_AFTER_S = 2.5
# The station's ground track moves about 7 km a second; a feed moving less than this is stuck.
MIN_GROUND_SPEED_KMS = 3.0
_MAX_BODY = 64 * 1024


class SourceError(Exception):
    """A source answered with something unusable; the message is safe to log and show."""


@dataclass(frozen=True)
class Fix:
    """A measured position from a live source."""

    source: str
    latitude: float
    longitude: float
    measured_at: datetime
    received_at: datetime
    altitude_km: float | None = None
    speed_kmh: float | None = None
    visibility: str | None = None


class SourceHealth:
    """Counters and last outcome of one source, as health() reports them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts = 0
        self.successes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_attempt: float | None = None
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def attempt(self) -> None:
        self.attempts += 1
        self.last_attempt = time.monotonic()

    def ok(self) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self.last_success = datetime.now(UTC)

    def failed(self, message: str) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = message
        self.last_error_at = datetime.now(UTC)

    def to_dict(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        failing = self.consecutive_failures > 0
        return {
            "state": "failing" if failing else "ok" if self.successes else "idle",
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_success": iso_z(self.last_success),
            "last_success_age_seconds": _age(self.last_success, now),
            "last_error": self.last_error,
            "last_error_at": iso_z(self.last_error_at),
        }




def _age(value: datetime | None, now: datetime) -> float | None:
    return round((now - value).total_seconds(), 1) if value else None


def describe_error(exc: BaseException) -> str:
    """A short, traceback-free, secret-free description of a fetch failure."""
    if isinstance(exc, SourceError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return f"connection failed ({type(exc).__name__})"
    return f"unexpected error ({type(exc).__name__})"


async def get_text(session: aiohttp.ClientSession, url: str, timeout: float) -> str:
    """The body of one GET, the whole exchange (connect, headers, body) bounded by `timeout`."""
    # The request runs in a task of its own: when aiohttp's timer fires just as the caller is
    # cancelled (the tracker shutting down), aiohttp can turn that cancellation into a
    # TimeoutError. Behind the shield the caller's cancellation always wins, and the callback
    # retrieves whatever the abandoned request ends with.
    request = asyncio.ensure_future(_request_text(session, url, timeout))
    request.add_done_callback(retrieve_outcome)
    try:
        return await asyncio.shield(request)
    except asyncio.CancelledError:
        request.cancel()
        raise


async def _request_text(session: aiohttp.ClientSession, url: str, timeout: float) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=True) as response:
        if response.status != 200:
            raise SourceError(f"HTTP {response.status}")
        body = await response.content.read(_MAX_BODY + 1)
    if len(body) > _MAX_BODY:
        raise SourceError("response too large")
    return body.decode("utf-8", errors="replace")


def _number(value: Any, name: str, low: float, high: float) -> float:
    # Open Notify sends latitude and longitude as strings; wheretheiss.at sends numbers.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SourceError(f"malformed body: {name} missing or not a number")
    try:
        number = float(value)
    except ValueError:
        raise SourceError(f"malformed body: {name} is not a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise SourceError(f"malformed body: {name} out of range")
    return number


def _timestamp(value: Any, received: datetime) -> datetime:
    seconds = _number(value, "timestamp", 0, 1e11)
    measured = datetime.fromtimestamp(seconds, UTC)
    skew = (received - measured).total_seconds()
    if abs(skew) > MAX_CLOCK_SKEW.total_seconds():
        relation = "behind" if skew > 0 else "ahead of"
        raise SourceError(f"stale: timestamp {abs(skew):.0f} s {relation} the local clock")
    return measured


def check_moving(fix: Fix, previous: Fix | None) -> None:
    """Raise SourceError when `fix`, next to the last one accepted from its source, shows a frozen feed."""
    if previous is None:
        return
    waited = (fix.received_at - previous.received_at).total_seconds()
    advanced = (fix.measured_at - previous.measured_at).total_seconds()
    if advanced <= 0:
        if waited >= FROZEN_AFTER_S:
            raise SourceError(f"frozen: timestamp has not moved in {waited:.0f} s")
        return
    moved = ground_distance_km(previous.latitude, previous.longitude, fix.latitude, fix.longitude)
    if moved < MIN_GROUND_SPEED_KMS * advanced:
        raise SourceError(f"frozen: position moved {moved:.1f} km in {advanced:.0f} s")


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise SourceError("malformed body: not JSON") from None
    if not isinstance(data, dict):
        raise SourceError("malformed body: not a JSON object")
    return data


def parse_open_notify(text: str, received: datetime) -> Fix:
    """A Fix from Open Notify's iss-now.json body; raises SourceError."""
    data = _json_object(text)
    if data.get("message") != "success":
        raise SourceError("malformed body: message is not 'success'")
    position = data.get("iss_position")
    if not isinstance(position, dict):
        raise SourceError("malformed body: iss_position missing")
    return Fix(
        source="open-notify",
        latitude=_number(position.get("latitude"), "latitude", -90, 90),
        longitude=_number(position.get("longitude"), "longitude", -180, 180),
        measured_at=_timestamp(data.get("timestamp"), received),
        received_at=received,
    )


def parse_wheretheiss(text: str, received: datetime) -> Fix:
    """A Fix from wheretheiss.at's /v1/satellites/25544 body; raises SourceError."""
    data = _json_object(text)
    if data.get("units", "kilometers") != "kilometers":
        raise SourceError("malformed body: units are not kilometers")
    visibility = data.get("visibility")
    return Fix(
        source="wheretheiss",
        latitude=_number(data.get("latitude"), "latitude", -90, 90),
        longitude=_number(data.get("longitude"), "longitude", -180, 180),
        measured_at=_timestamp(data.get("timestamp"), received),
        received_at=received,
        altitude_km=_number(data.get("altitude"), "altitude", 100, 2000),
        speed_kmh=_number(data.get("velocity"), "velocity", 10000, 40000),
        visibility=visibility if visibility in {"daylight", "eclipsed"} else None,
    )


class LiveSource:
    """A JSON position API polled no more often than `min_interval` seconds."""

    def __init__(self, name: str, url: str, parser: Any, timeout: float, min_interval: float) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout
        self.min_interval = min_interval
        self.health = SourceHealth(name)
        self._parse = parser
        self._last_fix: Fix | None = None

    def due(self) -> bool:
        """Whether a poll now respects the source's rate limit and failure back-off."""
        last = self.health.last_attempt
        if last is None:
            return True
        wait = self.min_interval
        if self.health.consecutive_failures:
            wait = min(self.min_interval * 2 ** min(self.health.consecutive_failures, 6), 300.0)
        return time.monotonic() - last >= wait

    async def fetch(self, session: aiohttp.ClientSession) -> Fix:
        """One request; records health; raises on any failure (already described)."""
        self.health.attempt()
        try:
            text = await get_text(session, self.url, self.timeout)
            fix = self._parse(text, datetime.now(UTC))
            check_moving(fix, self._last_fix)
        except asyncio.CancelledError:
            self.health.failed("cancelled")
            raise
        except Exception as exc:
            message = describe_error(exc)
            self.health.failed(message)
            # Once when a source starts failing; an outage of hours is not a warning every poll.
            failures = self.health.consecutive_failures
            log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                    "ISS source %s failed (%d in a row): %s", self.name, failures, message)
            raise SourceError(message) from None
        if self.health.consecutive_failures:
            log.info("ISS source %s answers again after %d failures", self.name, self.health.consecutive_failures)
        self.health.ok()
        last = self._last_fix
        if last is None or fix.measured_at > last.measured_at:
            self._last_fix = fix  # a repeat within the frozen grace keeps the first one's receipt time
        return fix


def open_notify(url: str, timeout: float) -> LiveSource:
    """Open Notify asks for at most one poll every 5 s."""
    return LiveSource("open-notify", url, parse_open_notify, timeout, 5.0)


def wheretheiss(url: str, timeout: float) -> LiveSource:
    """wheretheiss.at allows about one request a second."""
    return LiveSource("wheretheiss", url, parse_wheretheiss, timeout, 1.0)


class PeriodicSource:
    """A source asked rarely (hours apart): the last attempt and the last good answer are kept on disk,
    so a restart neither refetches nor starts empty; a failure is retried after 10 min, doubling up to
    the full interval (CelesTrak blocks clients that keep asking, and asks them to stop on a non-200)."""

    name = "periodic"

    def __init__(self, timeout: float, interval: float, cache_path: Path) -> None:
        self.timeout = timeout
        self.interval = interval
        self.cache_path = cache_path
        self.health = SourceHealth(self.name)
        self.value: Any = None
        self._last_attempt_wall: float | None = None
        self._load_cache()

    # What a subclass supplies.
    async def _download(self, session: aiohttp.ClientSession) -> Any:
        raise NotImplementedError

    def _to_cache(self, value: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _from_cache(self, data: dict[str, Any], fetched_at: datetime) -> Any:
        raise NotImplementedError

    def _describe_failure(self, exc: Exception) -> str:
        return describe_error(exc)

    def _load_cache(self) -> None:
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
            self._last_attempt_wall = float(data["attempted_at"])
            if data.get("fetched_at") is not None:
                fetched = datetime.fromtimestamp(float(data["fetched_at"]), UTC)
                self.value = self._from_cache(data, fetched)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, TleError) as exc:
            log.warning("ignoring unreadable cache %s: %s", self.cache_path.name, type(exc).__name__)

    def _save_cache(self, fetched_at: datetime | None) -> None:
        data: dict[str, Any] = {"attempted_at": self._last_attempt_wall, "fetched_at": None}
        if self.value is not None and fetched_at is not None:
            data.update(self._to_cache(self.value), fetched_at=fetched_at.timestamp())
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            log.warning("could not write the %s cache: %s", self.name, type(exc).__name__)

    def _fetched_at(self) -> datetime | None:
        return getattr(self.value, "fetched_at", None)

    def seconds_until_due(self) -> float:
        """Seconds until the source may be asked again (0 when due); failures retry sooner, backing off."""
        if self._last_attempt_wall is None:
            return 0.0
        wait = self.interval
        if self.health.consecutive_failures or self.value is None:
            # 10 min, 20, 40 ... up to the full interval: a client that hammers gets blocked.
            doublings = max(0, min(self.health.consecutive_failures - 1, 8))
            wait = min(self.interval, 600.0 * 2**doublings)
        return max(0.0, self._last_attempt_wall + wait - time.time())

    async def fetch(self, session: aiohttp.ClientSession) -> Any:
        """One attempt (persisted even when it fails); the new value, or SourceError."""
        self.health.attempt()
        self._last_attempt_wall = time.time()
        try:
            value = await self._download(session)
        except asyncio.CancelledError:
            self.health.failed("cancelled")
            raise
        except Exception as exc:
            message = self._describe_failure(exc)
            self.health.failed(message)
            log.warning("ISS source %s failed: %s", self.name, message)
            self._save_cache(self._fetched_at())
            raise SourceError(message) from None
        self.value = value
        self.health.ok()
        self._save_cache(self._fetched_at())
        return value


class CelestrakSource(PeriodicSource):
    """The current elements from CelesTrak's GP query: OMM JSON first, the TLE when JSON is unusable.

    A non-200 or a network failure ends the attempt at once (no second request to the TLE URL):
    CelesTrak asks clients to stop on any non-200. The disk cache keeps whichever form arrived.
    """

    name = "celestrak"

    def __init__(self, url: str, timeout: float, interval: float, cache_dir: Path) -> None:
        self.url = url
        self.format: str | None = None  # "omm" or "tle": what the elements in hand came as
        super().__init__(timeout, interval, cache_dir / "celestrak_25544.json")

    @property
    def elements(self) -> Elements | None:
        return self.value

    async def _download(self, session: aiohttp.ClientSession) -> Elements:
        received = datetime.now(UTC)
        text = await get_text(session, self.url, self.timeout)
        if text.lstrip()[:1] in {"[", "{"}:
            try:
                return self._checked(parse_omm_json(text, "celestrak", received), "omm")
            except (TleError, SourceError) as exc:
                tle_url = _tle_form(self.url)
                if tle_url is None:
                    raise
                # An answer came (a 200), so one more request for the other form is within the rules.
                log.warning("CelesTrak OMM unusable (%s); asking for the TLE", exc)
                text = await get_text(session, tle_url, self.timeout)
        return self._checked(parse_tle(text, "celestrak", received), "tle")

    def _checked(self, elements: Elements, form: str) -> Elements:
        if elements.catalog_number != 25544:
            raise SourceError(f"elements are for catalog number {elements.catalog_number}, not 25544")
        self.format = form
        return elements

    def _describe_failure(self, exc: Exception) -> str:
        return f"bad elements: {exc}" if isinstance(exc, TleError) else describe_error(exc)

    def _to_cache(self, value: Elements) -> dict[str, Any]:
        if value.omm is not None:
            return {"format": "omm", "omm": value.omm}
        return {"format": "tle", "text": value.text()}

    def _from_cache(self, data: dict[str, Any], fetched_at: datetime) -> Elements:
        if data.get("format") == "omm":
            self.format = "omm"
            return parse_omm(data["omm"], "celestrak", fetched_at)
        self.format = "tle"
        return parse_tle(data["text"], "celestrak", fetched_at)


def _tle_form(url: str) -> str | None:
    """The same GP query asking for FORMAT=TLE, or None when the URL has no FORMAT=JSON."""
    marker = "FORMAT=JSON"
    index = url.upper().find(marker)
    if index < 0:
        return None
    return url[:index] + "FORMAT=TLE" + url[index + len(marker):]
