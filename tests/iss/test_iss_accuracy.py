"""The stated accuracy covers the real error: a fix on an orbit plane turned from the model's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.iss.orbit import ground_distance_km
from services.iss.tracker import IssTracker
from tests.fakes.iss_sources import FakeIssSources, tracker_settings, wait_until


# (the plane turned by degrees, about the station's point this many minutes before the fix): a turn
# about the point 23 minutes back (a quarter orbit) puts the fix where the planes are furthest apart;
# about the point at the fix's time, where they cross (no distance to see, the heading still off).
@pytest.mark.parametrize("turn", [0.5, 2.0])
@pytest.mark.parametrize("axis_minutes_back", [23, 12, 0])
async def test_after_a_fix_on_a_turned_plane_the_stated_accuracy_covers_the_real_error(
        io_loop, tmp_path, turn, axis_minutes_back):
    async with FakeIssSources() as fakes:
        fakes.turn_plane(turn, datetime.now(UTC) - timedelta(minutes=axis_minutes_back))
        # One source, one fix, and only the shipped elements to move it on with.
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            await tracker.current()
            fix_time = datetime.fromisoformat(tracker.health()["fix"]["measured_at"])
            report = []
            for minutes in (1, 10, 20, 30):
                state = tracker.state_at(fix_time + timedelta(minutes=minutes))
                assert state is not None
                lat, lon = fakes.truth_at(state.at)
                real = ground_distance_km(lat, lon, state.latitude, state.longitude)
                report.append((minutes, round(real, 1), state.accuracy_km))
            assert all(stated >= real for _, real, stated in report), report
        finally:
            await tracker.close()


async def test_once_two_fixes_give_the_track_the_stated_accuracy_still_covers_the_error_and_tightens(
        io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.turn_plane(2.0, datetime.now(UTC))  # the fix where the planes cross: the worst case for one fix
        settings = tracker_settings(fakes, tmp_path, iss_sources=("wheretheiss",), iss_refresh_interval=0.2)
        tracker = IssTracker(settings)
        try:
            await tracker.current()
            single = tracker.state_at(datetime.fromisoformat(tracker.health()["fix"]["measured_at"])
                                      + timedelta(minutes=10))
            await wait_until(lambda: fakes.requests["wheretheiss"] >= 4, 10.0, "a few fixes")
            fix_time = datetime.fromisoformat(tracker.health()["fix"]["measured_at"])
            for minutes in (1, 10):
                state = tracker.state_at(fix_time + timedelta(minutes=minutes))
                lat, lon = fakes.truth_at(state.at)
                real = ground_distance_km(lat, lon, state.latitude, state.longitude)
                assert state.accuracy_km >= real, (minutes, real, state.accuracy_km)
            assert state.accuracy_km < single.accuracy_km / 2, (state.accuracy_km, single.accuracy_km)
        finally:
            await tracker.close()
