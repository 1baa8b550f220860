"""IssTracker against fake sources on loopback: cold start, fallbacks, timeouts, the TLE cache."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from services.iss.describe import describe_state
from services.iss.orbit import ground_distance_km
from services.iss.sources import SourceError, open_notify
from services.iss.tracker import IssTracker
from tests.conftest import AsyncioErrors
from tests.fakes.iss_sources import FakeIssSources, retimed_tle, tracker_settings, wait_until

FAILURES = ["500", "hang", "drop", "malformed"]


def _near_truth(fakes: FakeIssSources, state, km: float) -> float:
    lat, lon = fakes.truth_at(state.at)
    distance = ground_distance_km(lat, lon, state.latitude, state.longitude)
    assert distance < km, f"{distance:.1f} km from the fake's position"
    return distance


async def test_cold_concurrent_callers_share_one_fetch(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path))
        try:
            states = await asyncio.gather(*(tracker.current() for _ in range(25)))
            assert fakes.requests["open-notify"] == 1
            assert {state.source for state in states} == {"open-notify"}
            for _ in range(200):
                await tracker.current()
            assert fakes.requests["open-notify"] == 1
            assert fakes.requests["wheretheiss"] == 0
        finally:
            await tracker.close()


async def test_live_fix_is_moved_on_to_the_request_time(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        # The real station is 20 minutes of orbit away from where the stale bundled TLE says.
        fakes.truth_shift_s = 1200.0
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            first = await tracker.current()
            assert first.source == "open-notify"
            _near_truth(fakes, first, 15.0)
            # Later requests, with no new poll, are moved on along the orbit, not repeated.
            await asyncio.sleep(1.2)
            later = await tracker.current()
            assert fakes.requests["open-notify"] == 1
            assert later.at - first.at >= timedelta(seconds=1)
            moved = ground_distance_km(first.latitude, first.longitude, later.latitude, later.longitude)
            assert moved > 6.0  # about 7 km of ground a second
            _near_truth(fakes, later, 15.0)
            assert not later.rough
        finally:
            await tracker.close()


@pytest.mark.parametrize("mode", FAILURES)
async def test_open_notify_down_falls_back_to_wheretheiss(io_loop, tmp_path, mode):
    async with FakeIssSources() as fakes:
        fakes.fail("open-notify", mode)
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_timeout=0.5))
        try:
            started = time.monotonic()
            state = await tracker.current()
            assert time.monotonic() - started < 0.5 + 0.3
            assert state is not None
            await wait_until(lambda: tracker.health()["source"] == "wheretheiss", 5.0, "wheretheiss fix")
            state = await tracker.current()
            assert state.source == "wheretheiss"
            _near_truth(fakes, state, 15.0)
            assert fakes.requests["wheretheiss"] == 1
            health = tracker.health()["sources"]
            assert health["open-notify"]["state"] == "failing"
            assert health["open-notify"]["last_error"]
            assert health["wheretheiss"]["state"] == "ok"
        finally:
            await tracker.close()


@pytest.mark.parametrize("mode", FAILURES)
async def test_live_sources_down_uses_fresh_celestrak_elements(io_loop, tmp_path, mode):
    async with FakeIssSources() as fakes:
        now = datetime.now(UTC)
        fakes.tle_text = retimed_tle(fakes.tle_text, now - timedelta(hours=6))
        fakes.fail("open-notify", mode)
        fakes.fail("wheretheiss", mode)
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_timeout=0.5))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.polling.tle_cycles >= 1, 5.0, "a CelesTrak fetch")
            state = await tracker.current()
            assert state.source == "celestrak-tle"
            assert not state.rough
            assert "CelesTrak orbital elements 6 h old" in state.accuracy
            assert fakes.requests["celestrak"] == 1
        finally:
            await tracker.close()


@pytest.mark.parametrize("mode", FAILURES)
async def test_all_down_serves_the_bundled_tle_with_its_staleness(io_loop, tmp_path, mode):
    async with FakeIssSources() as fakes:
        fakes.fail_all(mode)
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_timeout=0.5))
        try:
            started = time.monotonic()
            state = await tracker.current()
            assert time.monotonic() - started < 0.5 + 0.3
            assert state.source == "bundled-tle"
            assert state.rough
            days = round((state.at - state.measured_at).total_seconds() / 86400)
            text = describe_state(state)
            assert f"bundled orbital elements {days} days old" in text
            assert "rough estimate" in text
            assert "thousands of km" in text
        finally:
            await tracker.close()


async def test_hanging_sources_never_hold_a_caller_past_the_timeout(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.fail_all("hang")
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_timeout=0.4))
        try:
            started = time.monotonic()
            states = await asyncio.gather(*(tracker.current() for _ in range(10)))
            assert time.monotonic() - started < 0.4 + 0.3
            assert all(state is not None for state in states)
            # After the cold start, nobody waits at all even though sources still hang.
            started = time.monotonic()
            await tracker.current()
            assert time.monotonic() - started < 0.05
        finally:
            await tracker.close()


async def test_celestrak_interval_holds_across_restarts(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.tle_text = retimed_tle(fakes.tle_text, datetime.now(UTC) - timedelta(hours=3))
        fakes.fail("open-notify", "500")
        fakes.fail("wheretheiss", "500")
        settings = tracker_settings(fakes, tmp_path)
        first = IssTracker(settings)
        try:
            await first.current()
            await wait_until(lambda: first.polling.tle_cycles >= 1, 5.0, "the first CelesTrak fetch")
        finally:
            await first.close()
        assert fakes.requests["celestrak"] == 1

        second = IssTracker(settings)
        try:
            state = await second.current()
            await wait_until(lambda: second.polling.cycles >= 1, 5.0, "a refresh cycle")
            assert state.source == "celestrak-tle"
            assert second.health()["sources"]["celestrak"]["next_fetch_in_seconds"] > 3600
            assert fakes.requests["celestrak"] == 1
        finally:
            await second.close()

        # A tracker with an empty cache does fetch: the count above is not held by accident.
        third = IssTracker(tracker_settings(fakes, tmp_path / "other"))
        try:
            await third.current()
            await wait_until(lambda: fakes.requests["celestrak"] == 2, 5.0, "a fetch with no cache")
        finally:
            await third.close()


async def test_bad_tle_checksum_is_rejected(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        text = retimed_tle(fakes.tle_text, datetime.now(UTC) - timedelta(hours=3))
        name, line1, line2 = text.splitlines()
        broken = line1[:68] + str((int(line1[68]) + 1) % 10)
        fakes.tle_text = f"{name}\n{broken}\n{line2}\n"
        fakes.fail("open-notify", "500")
        fakes.fail("wheretheiss", "500")
        tracker = IssTracker(tracker_settings(fakes, tmp_path))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.polling.tle_cycles >= 1, 5.0, "a CelesTrak fetch")
            state = await tracker.current()
            assert state.source == "bundled-tle"
            assert "checksum" in tracker.health()["sources"]["celestrak"]["last_error"]
        finally:
            await tracker.close()


async def test_nothing_known_returns_none(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.fail_all("500")
        settings = tracker_settings(
            fakes, tmp_path, iss_sources=("open-notify",), bundled_tle=tmp_path / "missing.tle"
        )
        tracker = IssTracker(settings)
        try:
            assert await tracker.current() is None
            assert tracker.state_at(datetime.now(UTC)) is None
            assert tracker.health()["status"] == "unavailable"
        finally:
            await tracker.close()


async def test_a_live_fix_alone_says_nothing_about_another_moment(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        settings = tracker_settings(fakes, tmp_path, iss_sources=("open-notify",), bundled_tle=None)
        tracker = IssTracker(settings)
        try:
            now = await tracker.current()
            assert now is not None and now.source == "open-notify"
            assert tracker.state_at(datetime.now(UTC) + timedelta(hours=23)) is None
        finally:
            await tracker.close()


async def test_close_cancels_the_background_loops(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path))
        await tracker.current()
        tasks = list(tracker.polling.loops)
        assert tasks and not any(task.done() for task in tasks)
        await tracker.close()
        assert all(task.done() for task in tasks)
        requests = sum(fakes.requests.values())
        assert await tracker.current() is not None
        assert sum(fakes.requests.values()) == requests


async def test_celestrak_down_alone_leaves_the_live_source_in_charge(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.fail("celestrak", "500")
        tracker = IssTracker(tracker_settings(fakes, tmp_path))
        try:
            state = await tracker.current()
            await wait_until(lambda: tracker.polling.tle_cycles >= 1, 5.0, "a CelesTrak attempt")
            assert state.source == "open-notify"
            health = tracker.health()
            assert health["sources"]["celestrak"]["state"] == "failing"
            assert health["sources"]["celestrak"]["last_error"] == "HTTP 500"
            # A failure is retried after minutes, not at the next refresh.
            assert health["sources"]["celestrak"]["next_fetch_in_seconds"] >= 590
            assert health["elements"]["origin"] == "bundled"
        finally:
            await tracker.close()


async def test_health_is_json_and_failures_log_no_traceback(io_loop, tmp_path, caplog):
    import orjson

    async with FakeIssSources() as fakes:
        fakes.fail("open-notify", "drop")
        fakes.fail("wheretheiss", "malformed")
        fakes.fail("celestrak", "500")
        tracker = IssTracker(tracker_settings(fakes, tmp_path))
        try:
            with caplog.at_level("DEBUG"):
                await tracker.current()
                polling = tracker.polling
                await wait_until(lambda: polling.tle_cycles >= 1 and polling.cycles >= 1, 5.0, "a cycle")
            health = orjson.loads(orjson.dumps(tracker.health()))
            assert health["status"] == "propagating"
            assert set(health["sources"]) == {"open-notify", "wheretheiss", "celestrak", "astros"}
            assert health["sources"]["wheretheiss"]["last_error"].startswith("malformed body")
            assert health["sources"]["open-notify"]["last_error"].startswith("connection failed")
            assert caplog.records
            for record in caplog.records:
                assert record.exc_info is None
                assert "Traceback" not in record.getMessage()
        finally:
            await tracker.close()


async def test_steady_state_current_asks_no_source_and_follows_the_clock(io_loop, tmp_path):
    # What it costs per request is a figure of `python -m bench.costs`; here, what it does.
    async with FakeIssSources() as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.health()["geography"]["loaded"], 5.0, "geography")
            asked = sum(fakes.requests.values())
            states = [await tracker.current() for _ in range(500)]
            assert sum(fakes.requests.values()) == asked
            assert all(state.over is not None and state.nearest_city is not None for state in states)
            times = [state.at for state in states]
            assert times == sorted(times)
            # States are given at whole seconds (the time a reader sees is the position's time).
            assert all(when.microsecond == 0 for when in times)
            await asyncio.sleep(1.0)
            later = await tracker.current()
            assert later.at > times[0]
            assert (later.latitude, later.longitude) != (states[0].latitude, states[0].longitude)
            assert sum(fakes.requests.values()) - asked <= 1
        finally:
            await tracker.close()


async def test_requests_within_one_second_share_a_state_until_a_fix_moves_it(io_loop, tmp_path):
    """The state is computed once per whole second, for every request in it, and at once again
    when what it comes from changes (here a new live fix), not a second later."""
    async with FakeIssSources() as fakes:
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.fix is not None, 5.0, "a live fix")
            for _ in range(50):  # bounded: a try that straddles a second boundary is done again
                first = await tracker.current()
                second = await tracker.current()
                old = tracker.fix
                tracker.fix_arrived(dataclasses.replace(old, latitude=-old.latitude, longitude=old.longitude / 2,
                                                        measured_at=datetime.now(UTC)))
                third = await tracker.current()
                fourth = await tracker.current()
                if first.at == fourth.at:
                    break
            assert first.at == fourth.at, "no try within one second"
            assert second is first  # the same second, the same data: computed once
            assert third is not first and (third.latitude, third.longitude) != (first.latitude, first.longitude)
            assert fourth is third
        finally:
            await tracker.close()


async def test_state_at_and_track_follow_the_live_fix(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.truth_shift_s = -900.0
        tracker = IssTracker(tracker_settings(fakes, tmp_path, iss_sources=("open-notify",)))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.health()["geography"]["loaded"], 5.0, "geography")
            for minutes in (-60, 20, 90):
                when = datetime.now(UTC) + timedelta(minutes=minutes)
                state = tracker.state_at(when)
                assert state.at == when
                _near_truth(fakes, state, 30.0)
                assert state.over is not None
            start = datetime.now(UTC)
            track = tracker.track(start, start + timedelta(minutes=10), 60)
            assert len(track) == 11
            lat, lon = fakes.truth_at(start + timedelta(minutes=10))
            assert ground_distance_km(lat, lon, track[-1]["latitude"], track[-1]["longitude"]) < 30
        finally:
            await tracker.close()


async def test_fresh_cached_elements_spare_a_cold_caller_the_wait(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.tle_text = retimed_tle(fakes.tle_text, datetime.now(UTC) - timedelta(hours=1))
        first = IssTracker(tracker_settings(fakes, tmp_path))
        try:
            await first.current()
            await wait_until(lambda: first.polling.tle_cycles >= 1, 5.0, "the first CelesTrak fetch")
        finally:
            await first.close()
        fakes.fail("open-notify", "hang")
        second = IssTracker(tracker_settings(fakes, tmp_path, iss_timeout=1.0))
        try:
            started = time.monotonic()
            state = await second.current()
            assert time.monotonic() - started < 0.2
            assert state.source == "celestrak-tle" and not state.rough
        finally:
            await second.close()


async def test_a_fetch_cancelled_as_its_timeout_fires_is_cancelled_and_leaves_no_error(io_loop, tmp_path):
    # Shutting the tracker down cancels fetches in flight, some just as their own timeout fires.
    # That once left a "Task exception was never retrieved" behind (logged whenever the garbage
    # collector next ran: in CI, inside another module's import, which then failed), and could
    # turn the cancellation into a timeout, so the tracker's loop went on after close().
    asyncio_errors = AsyncioErrors()
    logging.getLogger("asyncio").addHandler(asyncio_errors)
    cancelled = 0
    try:
        async with FakeIssSources() as fakes:
            fakes.fail("open-notify", "hang")
            source = open_notify(fakes.url("open-notify"), timeout=0.02)
            async with aiohttp.ClientSession() as session:
                for attempt in range(40):
                    fetch = asyncio.ensure_future(source.fetch(session))
                    await asyncio.sleep(0.012 + (attempt % 10) * 0.001)  # around the 20 ms timeout
                    if fetch.done():  # timed out first: nothing to cancel
                        with pytest.raises(SourceError):
                            fetch.result()
                        continue
                    fetch.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await fetch
                    cancelled += 1
        gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(asyncio_errors)
    assert cancelled >= 5
    assert asyncio_errors.messages == []
