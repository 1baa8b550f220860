"""A live fix is the truth at its time: the orbit model only moves it on; frozen feeds are refused."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.iss.orbit import ground_distance_km
from services.iss.tle import parse_tle
from services.iss.tracker import IssTracker
from tests.fakes.iss_sources import FakeIssSources, retimed_tle, tracker_settings, wait_until


def _off_orbit(when: datetime) -> tuple[float, float]:
    """A moving point no ISS orbit reaches: latitudes from 60° to 75° north."""
    seconds = when.timestamp()
    return 67.5 + 7.5 * ((seconds / 600.0) % 2 - 1), ((seconds * 0.06) % 360.0) - 180.0


# (truth shift along the track in s, plane turned by degrees, a track no orbit model reaches)
CASES = {
    "on-orbit, 20 min along the track": (1200.0, 0.0, False),
    "plane turned 0.5°": (300.0, 0.5, False),
    "plane turned 2°": (-600.0, 2.0, False),
    "plane turned 5°": (0.0, 5.0, False),
    "polar orbit, beyond the model's latitudes": (0.0, 40.0, False),
    "moving point off any orbit": (0.0, 0.0, True),
}


def _fakes_for(case: str) -> FakeIssSources:
    shift, turn, off_orbit = CASES[case]
    fakes = FakeIssSources()
    fakes.truth_shift_s = shift
    if turn:
        # Tilted about the point a quarter orbit back: the source's track crosses the model's
        # plane about now and is `turn` degrees off it a quarter orbit on.
        fakes.turn_plane(turn, datetime.now(UTC) - timedelta(minutes=23))
    if off_orbit:
        fakes.truth_track = _off_orbit
    return fakes


def _error_km(fakes: FakeIssSources, state) -> float:
    lat, lon = fakes.truth_at(state.at)
    return ground_distance_km(lat, lon, state.latitude, state.longitude)


@pytest.mark.parametrize("case", list(CASES))
async def test_the_state_is_the_sources_point_moved_on_to_the_request_time(io_loop, tmp_path, case):
    async with _fakes_for(case) as fakes:
        # Only the shipped elements (52 days old by now) to move the fix on with.
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            first = await tracker.current()
            assert first.source == "open-notify"
            assert _error_km(fakes, first) < 10.0, (case, _error_km(fakes, first))
            # The fix one second old, whatever the orbit model thinks of it.
            fix_time = datetime.fromisoformat(tracker.health()["fix"]["measured_at"])
            one_second = tracker.state_at(fix_time + timedelta(seconds=1))
            assert _error_km(fakes, one_second) < 10.0, (case, _error_km(fakes, one_second))
            _shift, turn, off_orbit = CASES[case]
            if turn <= 5.0 and not off_orbit:
                # On a realistic orbit, a few seconds later with no new poll: still on the source's track.
                await asyncio.sleep(1.0)
                later = await tracker.current()
                assert fakes.requests["open-notify"] == 1
                assert later.at > first.at
                assert _error_km(fakes, later) < 10.0, (case, _error_km(fakes, later))
        finally:
            await tracker.close()


@pytest.mark.parametrize("case", ["plane turned 2°", "polar orbit, beyond the model's latitudes"])
async def test_two_fixes_from_one_source_carry_its_track_for_minutes(io_loop, tmp_path, case):
    async with _fakes_for(case) as fakes:
        settings = tracker_settings(fakes, tmp_path, iss_sources=("wheretheiss",), iss_refresh_interval=0.2)
        tracker = IssTracker(settings)
        try:
            await tracker.current()
            await wait_until(lambda: fakes.requests["wheretheiss"] >= 4, 10.0, "a few fixes")
            for minutes in (1, 5):
                state = tracker.state_at(datetime.now(UTC) + timedelta(minutes=minutes))
                assert _error_km(fakes, state) < 10.0 * minutes, (minutes, _error_km(fakes, state))
        finally:
            await tracker.close()


async def test_disagreement_is_reported_in_health_and_the_log_with_the_figure(io_loop, tmp_path, caplog):
    async with _fakes_for("plane turned 5°") as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            with caplog.at_level(logging.WARNING, logger="iss_llm.iss"):
                state = await tracker.current()
            health = orjson.loads(orjson.dumps(tracker.health()))
            disagreement = health["model_disagreement"]
            assert disagreement["km"] > 8.0
            assert disagreement["fix_source"] == "open-notify"
            assert disagreement["elements_origin"] == "bundled"
            figure = f"{disagreement['km']:.1f} km"
            warnings = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
            assert len(warnings) == 1 and figure in warnings[0], warnings
            assert state.source == "open-notify"
        finally:
            await tracker.close()


async def test_fresher_elements_are_used_as_soon_as_they_arrive(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            await tracker.current()
            bundled = tracker.elements()
            assert bundled.origin == "bundled"
            fresh = parse_tle(retimed_tle(fakes.tle_text, datetime.now(UTC) - timedelta(hours=1)), "celestrak")
            assert tracker.elements_arrived(fresh)
            assert tracker.elements() is fresh
            assert tracker.health()["elements"]["origin"] == "celestrak"
            # Older elements never replace fresher ones.
            assert not tracker.elements_arrived(bundled)
            assert tracker.elements() is fresh
        finally:
            await tracker.close()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("frozen", "frozen: timestamp has not moved"), ("stuck-position", "frozen: position moved"),
     ("skewed", "stale: timestamp 60")],
)
async def test_a_stale_or_frozen_feed_is_failing_with_its_reason(io_loop, tmp_path, mode, reason):
    async with FakeIssSources() as fakes:
        fakes.fail("wheretheiss", mode)
        settings = tracker_settings(fakes, tmp_path, iss_sources=("wheretheiss", "open-notify"),
                                    iss_refresh_interval=0.2)
        tracker = IssTracker(settings)
        try:
            await tracker.current()
            await wait_until(
                lambda: (tracker.health()["sources"]["wheretheiss"]["last_error"] or "").startswith(reason),
                10.0, f"wheretheiss reported as {reason}",
            )
            health = tracker.health()
            assert health["sources"]["wheretheiss"]["state"] == "failing"
            # The next source takes over.
            await wait_until(lambda: tracker.health()["fix"]["source"] == "open-notify", 10.0, "open-notify")
            state = await tracker.current()
            assert _error_km(fakes, state) < 10.0
        finally:
            await tracker.close()
