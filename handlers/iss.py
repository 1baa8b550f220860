"""GET /iss: the station's current enriched state, or its propagated state and ground track."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import tornado.web

from config import Settings, parse_bool
from handlers.base import ApiHandler
from handlers.cross_site import check_public_read
from services.common.errors import ApiError
from services.iss.describe import describe_state
from services.iss.passes import DEFAULT_MIN_ELEVATION, MAX_DAYS
from services.iss.queries import MAX_OFFSET, MAX_PASSES, IssQueries
from services.iss.state import Tracker
from services.iss.tracker import MAX_TRACK_POINTS
from services.ops.connections import caller_left
from services.ops.forwarded import address_key
from services.ops.rate_limit import RateLimit

MAX_TRACK_MINUTES = 24 * 60
DEFAULT_STEP_S = 60.0
MIN_STEP_S = 10.0


def _parse_at(value: str, now: datetime) -> datetime:
    try:
        when = datetime.fromisoformat(value.strip().replace(" ", "+"))
    except ValueError:
        raise ApiError(400, "'at' must be an ISO 8601 time, e.g. 2026-11-26T12:00:00Z.", param="at") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if abs(when - now) > MAX_OFFSET:
        raise ApiError(400, "'at' must be within one day of now.", param="at")
    return when.astimezone(UTC)


def _parse_number(value: str, param: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise ApiError(400, f"'{param}' must be a number from {low:g} to {high:g}.", param=param)
    return number


class PublicReadHandler(ApiHandler):
    """Base of the /iss* routes: no key, but the cross-site and Host checks and a per-address rate limit."""

    config: Settings
    limit: RateLimit

    def prepare(self) -> None:
        super().prepare()
        if caller_left(self.request.connection):
            # Sent and abandoned (a flood's pattern): nobody is left to check, search or answer for.
            self.set_status(499, "Client Closed Request")
            raise tornado.web.Finish()
        check_public_read(self.request, self.config)
        wait = self.limit.take(address_key(self.request.remote_ip))  # an IPv6 caller by its /64
        if wait is not None:
            raise ApiError(429, "Too many requests to /iss from this address; slow down.", type="rate_limit_error",
                           code="rate_limit_exceeded", retry_after=wait)


class IssHandler(PublicReadHandler):
    """Public, read-only: where the ISS is now, or at ?at=, with ?track=<minutes> of ground track."""

    def initialize(self, settings: Settings, limit: RateLimit, tracker: Tracker) -> None:
        self.config, self.limit, self.tracker = settings, limit, tracker

    async def get(self) -> None:
        now = datetime.now(UTC)
        at_arg = self.get_query_argument("at", None)
        track_arg = self.get_query_argument("track", None)
        step_arg = self.get_query_argument("step", None)
        when = _parse_at(at_arg, now) if at_arg is not None else None
        minutes = _parse_number(track_arg, "track", 1, MAX_TRACK_MINUTES) if track_arg is not None else None
        step = _parse_number(step_arg, "step", MIN_STEP_S, 3600) if step_arg is not None else DEFAULT_STEP_S

        state = self.tracker.state_at(when) if when is not None else await self.tracker.current()
        if state is None:
            raise ApiError(
                503, "The ISS position is unavailable: no source answered and no orbital elements are known.",
                type="server_error", code="iss_unavailable",
            )
        body = {**state.to_dict(), "description": describe_state(state)}
        if minutes is not None:
            span = timedelta(minutes=minutes)
            # Widen the step rather than cut the track short when the span needs more points.
            step = max(step, 2 * span.total_seconds() / (MAX_TRACK_POINTS - 1))
            body["track"] = self.tracker.track(state.at - span, state.at + span, step)
        self.write_json(body)


def _parse_bool(value: str, param: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise ApiError(400, f"'{param}' must be true or false.", param=param) from None


class PassesHandler(PublicReadHandler):
    """Public, read-only: the next passes over ?place= (a city) or ?lat=&lon=, in UTC and local time;
    503 with Retry-After when the process's pass-search queue is full."""

    def initialize(self, settings: Settings, limit: RateLimit, queries: IssQueries) -> None:
        self.config, self.limit, self.queries = settings, limit, queries
        self._search: asyncio.Future[dict[str, Any]] | None = None
        self._gone = False

    async def get(self) -> None:
        place = self.get_query_argument("place", None)
        lat_arg, lon_arg = self.get_query_argument("lat", None), self.get_query_argument("lon", None)
        latitude = _parse_number(lat_arg, "lat", -90, 90) if lat_arg is not None else None
        longitude = _parse_number(lon_arg, "lon", -180, 180) if lon_arg is not None else None
        days = _parse_number(self.get_query_argument("days", "3"), "days", 0.01, MAX_DAYS)
        elevation = _parse_number(self.get_query_argument("min_elevation", str(DEFAULT_MIN_ELEVATION)),
                                  "min_elevation", 0, 80)
        limit = int(_parse_number(self.get_query_argument("limit", "5"), "limit", 1, MAX_PASSES))
        visible_only = _parse_bool(self.get_query_argument("visible_only", "false"), "visible_only")
        observer = self.queries.observer(place, latitude, longitude)
        self._search = asyncio.ensure_future(self.queries.passes(observer, days=days, min_elevation=elevation,
                                                                 visible_only=visible_only, limit=limit))
        try:
            body = await self._search
        except asyncio.CancelledError:
            if not self._gone:
                raise
            self.set_status(499, "Client Closed Request")  # for the access log: no one reads this answer
            return  # the caller left: its search was given up (unless others wait for it too)
        self.write_json(body)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._gone = True
        if self._search is not None:
            self._search.cancel()


class CrewHandler(PublicReadHandler):
    """Public, read-only: who is aboard the ISS, as Open Notify last said, with the list's age."""

    def initialize(self, settings: Settings, limit: RateLimit, queries: IssQueries) -> None:
        self.config, self.limit, self.queries = settings, limit, queries

    def get(self) -> None:
        self.write_json(self.queries.crew())
