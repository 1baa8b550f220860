"""CelesTrak's OMM JSON first with the TLE as fallback, and the crew from astros.json, both kept on disk."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from tornado.httpclient import AsyncHTTPClient

from services.iss.crew import parse_astros
from services.iss.orbit import ground_distance_km, propagate
from services.iss.sources import SourceError
from services.iss.tle import TleError, parse_omm_json, parse_tle
from services.iss.tracker import IssTracker
from tests.fakes.iss_sources import FakeIssSources, fixture_path, retimed_tle, tracker_settings, wait_until

ELEMENTS_ONLY = {"iss_sources": ("tle",)}


def _fresh(fakes: FakeIssSources) -> None:
    fakes.tle_text = retimed_tle(fakes.tle_text, datetime.now(UTC) - timedelta(hours=3))


async def test_omm_is_asked_for_first_and_propagates_like_the_tle(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        _fresh(fakes)
        tracker = IssTracker(tracker_settings(fakes, tmp_path, **ELEMENTS_ONLY))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.polling.tle_cycles >= 1, 5.0, "a CelesTrak fetch")
            assert fakes.queries["celestrak"] == ["CATNR=25544&FORMAT=JSON"]
            health = tracker.health()
            assert health["sources"]["celestrak"]["format"] == "omm"
            assert health["elements"]["origin"] == "celestrak"
            omm = tracker.elements()
            tle = parse_tle(fakes.tle_text, "test")
            when = datetime.now(UTC)
            a, b = propagate(omm.satrec, when), propagate(tle.satrec, when)
            assert ground_distance_km(a.latitude, a.longitude, b.latitude, b.longitude) < 0.1
        finally:
            await tracker.close()
        # A restart reads the OMM back from the disk cache and asks nothing.
        again = IssTracker(tracker_settings(fakes, tmp_path, **ELEMENTS_ONLY))
        try:
            state = await again.current()
            assert state.source == "celestrak-tle"
            assert again.health()["sources"]["celestrak"]["format"] == "omm"
            assert fakes.requests["celestrak"] == 1
        finally:
            await again.close()


async def test_unusable_omm_falls_back_to_the_tle_once(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        _fresh(fakes)
        fakes.omm_text = '[{"OBJECT_NAME": "ISS (ZARYA)", "MEAN_MOTION": "fast"}]'
        tracker = IssTracker(tracker_settings(fakes, tmp_path, **ELEMENTS_ONLY))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.polling.tle_cycles >= 1, 5.0, "a CelesTrak fetch")
            assert fakes.queries["celestrak"] == ["CATNR=25544&FORMAT=JSON", "CATNR=25544&FORMAT=TLE"]
            assert tracker.health()["sources"]["celestrak"]["format"] == "tle"
            assert tracker.health()["elements"]["origin"] == "celestrak"
        finally:
            await tracker.close()
        cached = json.loads((tmp_path / "celestrak_25544.json").read_text())
        assert cached["format"] == "tle" and cached["text"].startswith("ISS")


async def test_a_non_200_stops_the_attempt_without_asking_for_the_tle(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.fail("celestrak", "500")
        tracker = IssTracker(tracker_settings(fakes, tmp_path, **ELEMENTS_ONLY))
        try:
            await tracker.current()
            await wait_until(lambda: tracker.polling.tle_cycles >= 1, 5.0, "a CelesTrak attempt")
            await asyncio.sleep(0.3)
            assert fakes.requests["celestrak"] == 1
            assert tracker.health()["sources"]["celestrak"]["next_fetch_in_seconds"] >= 590
        finally:
            await tracker.close()


@pytest.mark.parametrize(
    "body",
    ["[]", "{}", '[{"NORAD_CAT_ID": 25544}]', "[1, 2]", '[{"EPOCH": "yesterday", "MEAN_MOTION": 15}]', "not json"],
)
def test_bad_omm_bodies_are_refused(body):
    with pytest.raises(TleError):
        parse_omm_json(body, "test")


def test_astros_keeps_only_the_iss_crew_and_bounds_the_names():
    crew = parse_astros(fixture_path("open_notify_astros.json").read_text(), datetime.now(UTC))
    assert crew.names == ("Example Person A", "Example Person B")
    long_list = {"message": "success", "people": [{"name": "N\n" + "x" * 500, "craft": "ISS"}] * 80}
    crew = parse_astros(json.dumps(long_list), datetime.now(UTC))
    assert len(crew.names) == 50 and all(len(name) <= 80 and "\n" not in name for name in crew.names)
    for bad in ("[]", '{"message": "failure"}', '{"message": "success", "people": 3}', "<html>"):
        with pytest.raises(SourceError):
            parse_astros(bad, datetime.now(UTC))


async def test_crew_is_fetched_in_the_background_cached_and_never_waited_for(io_loop, tmp_path):
    async with FakeIssSources() as fakes:
        fakes.fail("astros", "hang")
        settings = tracker_settings(fakes, tmp_path, iss_sources=("open-notify", "crew"), iss_timeout=0.5)
        tracker = IssTracker(settings)
        try:
            started = time.monotonic()
            await tracker.current()
            assert time.monotonic() - started < 0.5  # the live fix alone; nobody waits on the crew
            assert tracker.crew() is None
        finally:
            await tracker.close()
        fakes.fail("astros", "ok")
        tracker = IssTracker(settings)
        try:
            await tracker.current()
            await wait_until(lambda: tracker.crew() is not None, 5.0, "the crew")
            assert tracker.crew().names == ("Example Person A", "Example Person B")
        finally:
            await tracker.close()
        # Restarted with Open Notify's astros.json failing: the cached list, with its age, at once.
        fakes.fail("astros", "500")
        requests = fakes.requests["astros"]
        tracker = IssTracker(settings)
        try:
            assert tracker.crew().names == ("Example Person A", "Example Person B")
            await tracker.current()
            await asyncio.sleep(0.2)
            assert fakes.requests["astros"] == requests  # hours between fetches, across restarts
        finally:
            await tracker.close()


@pytest.mark.parametrize("overrides", [{"iss_sources": ("open-notify", "crew")}])
async def test_crew_endpoint(overrides, base_url, app, open_notify):
    client = AsyncHTTPClient()
    await app.services.tracker.start()
    await wait_until(lambda: app.services.tracker.crew() is not None, 5.0, "the crew")
    response = await client.fetch(base_url + "/iss/crew", raise_error=False)
    assert response.code == 200
    body = json.loads(response.body)
    assert body["known"] and body["count"] == 2
    assert body["names"] == ["Example Person A", "Example Person B"]
    assert 0 <= body["age_seconds"] < 60
