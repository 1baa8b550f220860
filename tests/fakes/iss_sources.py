"""Fake Open Notify, wheretheiss.at and CelesTrak: one real HTTP server on loopback.

Usage::

    async with FakeIssSources() as fakes:
        settings = fakes.settings(Settings(), iss_cache_dir=tmp_path)
        fakes.fail("open-notify", "500")     # or "hang", "drop", "malformed"; "ok" to heal
        ...
        assert fakes.requests["open-notify"] == 1

A request the fakes cannot read (not `GET <path> HTTP/1.x`) is answered 400 and recorded in
`malformed`, and closing the fakes then fails the test: such a request is the project's bug.

Paths: /iss-now.json (open-notify), /v1/satellites/25544 (wheretheiss), /gp.php (celestrak).
Positions are the truth TLE (default: the bundled one) propagated to the moment of each request
plus `truth_shift_s`, so a stale tracker TLE disagrees with the live sources the way the real
station disagrees with old elements. `tle_text` is what /gp.php serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sgp4.exporter import export_omm

from config import BUNDLED_TLE, Settings
from services.iss.orbit import Matrix, OrbitPoint, point_from_teme, rotate, rotation_about, teme_state
from services.iss.tle import Elements, checksum, parse_tle

SOURCES = ("open-notify", "wheretheiss", "celestrak", "astros")
# frozen: the same answer every time; stuck-position: the timestamp moves, the position does not;
# skewed: a consistent answer whose timestamp (and position) is `SKEW_S` behind the local clock.
MODES = ("ok", "500", "hang", "drop", "malformed", "frozen", "stuck-position", "skewed")
SKEW_S = 600.0
_PATHS = {
    "/iss-now.json": "open-notify", "/v1/satellites/25544": "wheretheiss", "/gp.php": "celestrak",
    "/astros.json": "astros",
}
_HANG_LIMIT_S = 30.0


def retimed_tle(text: str, epoch: datetime) -> str:
    """The same elements with their epoch moved to `epoch` and line 1's checksum recomputed."""
    name, line1, line2 = [line.rstrip() for line in text.strip().splitlines()]
    start = datetime(epoch.year, 1, 1, tzinfo=UTC)
    day = (epoch - start).total_seconds() / 86400 + 1
    body = f"{line1[:18]}{epoch.year % 100:02d}{day:012.8f}{line1[32:68]}"
    return f"{name}\n{body}{checksum(body)}\n{line2}\n"


class FakeIssSources:
    """The three ISS sources on one loopback port, with request counters and failure modes."""

    def __init__(self, truth_tle: str | None = None) -> None:
        text = truth_tle or BUNDLED_TLE.read_text(encoding="ascii")
        self.truth: Elements = parse_tle(text, "truth")
        self.truth_shift_s = 0.0
        # When set, where the fake's station is at a moment (overrides the truth TLE): a test double
        # can report points no orbit model reaches.
        self.truth_track: Callable[[datetime], tuple[float, float]] | None = None
        self.truth_rotation: Matrix | None = None
        self.tle_text = text
        self._frozen: dict[str, tuple[float, float, float]] = {}
        self.requests: Counter[str] = Counter()
        # The query string of each request, per source (CelesTrak's FORMAT=JSON or FORMAT=TLE).
        self.queries: dict[str, list[str]] = defaultdict(list)
        # When set, the body /gp.php?FORMAT=JSON answers instead of the OMM made from `tle_text`.
        self.omm_text: str | None = None
        self.astros_text = fixture_path("open_notify_astros.json").read_text(encoding="utf-8")
        self.modes: dict[str, str] = dict.fromkeys(SOURCES, "ok")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()
        self.port = 0
        self.malformed: list[str] = []

    async def __aenter__(self) -> FakeIssSources:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, release hanging requests and close every open connection; then fail
        (AssertionError) if any request was malformed."""
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        if self.malformed:
            raise AssertionError(f"the fake ISS sources got {len(self.malformed)} malformed request(s): "
                                 f"{self.malformed[:3]}")

    # ---- configuration a test uses ----

    def url(self, source: str) -> str:
        path = {v: k for k, v in _PATHS.items()}[source]
        return f"http://127.0.0.1:{self.port}{path}"

    def settings(self, base: Settings | None = None, **overrides: Any) -> Settings:
        """Settings whose three source URLs point at this fake."""
        return replace(
            base or Settings(),
            iss_api_url=self.url("open-notify"),
            wheretheiss_url=self.url("wheretheiss"),
            tle_url=self.url("celestrak") + "?CATNR=25544&FORMAT=JSON",
            astros_url=self.url("astros"),
            **overrides,
        )

    def fail(self, source: str, mode: str) -> None:
        """Switch a source to a failure mode ("500", "hang", "drop", "malformed") or back to "ok"."""
        if source not in SOURCES or mode not in MODES:
            raise ValueError(f"unknown source {source!r} or mode {mode!r}")
        self.modes[source] = mode

    def fail_all(self, mode: str) -> None:
        for source in SOURCES:
            self.fail(source, mode)

    def truth_at(self, when: datetime) -> tuple[float, float]:
        """Where the fake's station is at `when` (latitude, longitude)."""
        if self.truth_track is not None:
            return self.truth_track(when)
        point = self.truth_point(when)
        return point.latitude, point.longitude

    def truth_point(self, when: datetime) -> OrbitPoint:
        """The truth elements' inertial state `truth_shift_s` later, seen from the Earth at `when`: the
        station late or early along its orbit, as drag and reboosts leave it against old elements."""
        r, v = teme_state(self.truth.satrec, when + timedelta(seconds=self.truth_shift_s))
        if self.truth_rotation is not None:
            r, v = rotate(self.truth_rotation, r), rotate(self.truth_rotation, v)
        return point_from_teme(r, v, when)

    def turn_plane(self, degrees: float, at: datetime | None = None) -> None:
        """Turn the truth's orbit plane by `degrees` about the line from the Earth's centre to where
        the station is at `at` (now by default): the same orbit, tilted, through that point."""
        self.truth_rotation = None
        r, _ = teme_state(self.truth.satrec, (at or datetime.now(UTC)) + timedelta(seconds=self.truth_shift_s))
        self.truth_rotation = rotation_about(r, degrees)

    def reported(self, source: str) -> tuple[float, float, float]:
        """(timestamp, latitude, longitude) the source answers now: whole-second time, position then."""
        mode = self.modes[source]
        stamp = float(int(time.time()))
        if mode == "skewed":
            stamp -= SKEW_S
        if mode in {"frozen", "stuck-position"} and source in self._frozen:
            first = self._frozen[source]
            return (first if mode == "frozen" else (stamp, first[1], first[2]))
        lat, lon = self.truth_at(datetime.fromtimestamp(stamp, UTC))
        answer = (stamp, lat, lon)
        if mode in {"frozen", "stuck-position"}:
            self._frozen[source] = answer
        return answer

    # ---- the server ----

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/1."):
                self.malformed.append(request_line[:200])
                await self._respond(writer, 400, b"malformed request", "text/plain")
                return
            target = parts[1]
            source = _PATHS.get(target.split("?", 1)[0])
            if source is None:
                await self._respond(writer, 404, b"not found", "text/plain")
                return
            self.requests[source] += 1
            mode = self.modes[source]
            if mode == "hang":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), _HANG_LIMIT_S)
                return
            if mode == "drop":
                writer.transport.abort()
                return
            if mode == "500":
                await self._respond(writer, 500, b'{"error": "internal"}', "application/json")
                return
            if mode == "malformed":
                await self._respond(writer, 200, b'{"message": "success", "iss_posit', "application/json")
                return
            self.queries[source].append(target.partition("?")[2])
            body, kind = self._body(source, target.partition("?")[2])
            await self._respond(writer, 200, body, kind)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away or sent no complete head: nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()

    def _body(self, source: str, query: str = "") -> tuple[bytes, str]:
        if source == "astros":
            return self.astros_text.encode(), "application/json"
        if source == "celestrak" and "FORMAT=JSON" in query.upper():
            return self._omm_body(), "application/json"
        if source in {"open-notify", "wheretheiss"}:
            now, lat, lon = self.reported(source)
        if source == "open-notify":
            data = {
                "message": "success",
                "timestamp": int(now),
                "iss_position": {"latitude": f"{lat:.4f}", "longitude": f"{lon:.4f}"},
            }
            return json.dumps(data).encode(), "application/json"
        if source == "wheretheiss":
            point = self.truth_point(datetime.fromtimestamp(now, UTC))
            data = {
                "name": "iss", "id": 25544, "latitude": lat, "longitude": lon,
                "altitude": point.altitude_km, "velocity": point.speed_kmh,
                "visibility": "daylight" if point.sunlit else "eclipsed", "footprint": 4500.0,
                "timestamp": int(now), "units": "kilometers",
            }
            return json.dumps(data).encode(), "application/json"
        return self.tle_text.encode("ascii"), "text/plain"

    def _omm_body(self) -> bytes:
        """CelesTrak's GP JSON: a list of one OMM record, made from `tle_text` (or `omm_text` as set)."""
        if self.omm_text is not None:
            return self.omm_text.encode()
        try:
            elements = parse_tle(self.tle_text, "fake")
        except ValueError:
            return b'[{"OBJECT_NAME": "ISS (ZARYA)"}]'  # a record CelesTrak would never send: unusable
        return json.dumps([export_omm(elements.satrec, elements.name)]).encode()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, kind: str) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        writer.write(head + body)
        await writer.drain()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` every 10 ms until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def tracker_settings(fakes: FakeIssSources, cache_dir: Path, **overrides: Any) -> Settings:
    """Settings for a tracker that talks only to `fakes` (1 s timeout) and caches under `cache_dir`."""
    values: dict[str, Any] = {"iss_timeout": 1.0, "iss_cache_dir": cache_dir}
    values.update(overrides)
    return fakes.settings(Settings(), **values)


def fixture_path(name: str) -> Path:
    """A file from the ISS fixtures (the repo's copy, else ../shared), or the bundled TLE."""
    here = Path(__file__).resolve()
    roots = (
        here.parents[1] / "data" / "fixtures" / "iss",
        here.parents[3] / "shared" / "fixtures" / "iss",
        here.parents[2] / "data",
    )
    for root in roots:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(name)
