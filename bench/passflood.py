"""The soak's pass-search flood (issue 19, finding 1): bursts of GET /iss/passes at many distinct places.

A few tasks each send bursts of requests at once, every one at its own place (a seeded latitude and
longitude, distinct at the server's 0.1° rounding, so no cache or shared search answers it), and most
are abandoned a few milliseconds in, as a page of `<img>` tags or a careless script would. The
server must answer each one that is waited for with 200 (the passes), 503 (its pass-search queue
is full) or 429 (the per-address rate limit), the last two with Retry-After, all OpenAI-shaped;
anything else, and any wait past the timeout, is lost.

The flood comes from its own loopback address (127.0.0.2 by default), so its rate-limit bucket is
its own: the soak's other callers on 127.0.0.1 are not throttled by it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

FLOOD_ADDRESS = "127.0.0.2"


@dataclass(frozen=True)
class Search:
    """One /iss/passes request: its place, its length in days, and when (if ever) the caller leaves."""

    latitude: float
    longitude: float
    days: int
    abandon_at: float | None

    def query(self) -> str:
        return f"lat={self.latitude:.2f}&lon={self.longitude:.2f}&days={self.days}"


@dataclass
class PassFloodResult:
    """What the flood's callers saw: answers by status (and error code), abandonments, losses."""

    requests: int = 0
    abandoned: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # "200", "503 pass_search_busy", "429 ..."
    lost: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0

    def status_count(self, status: int) -> int:
        return sum(n for key, n in self.answered.items() if key.split()[0] == str(status))

    def text(self) -> str:
        answered = ", ".join(f"{k} {v}" for k, v in sorted(self.answered.items())) or "none"
        lost = ", ".join(f"{k} {v}" for k, v in sorted(self.lost.items())) or "none"
        return (f"{self.requests} requests, {self.abandoned} abandoned; answered: {answered}; lost: {lost}; "
                f"slowest answer {self.slowest:.2f} s")


def plan(tasks: int, bursts: int, burst: int, abandon_share: float, seed: int) -> list[list[list[Search]]]:
    """Per task, its bursts of searches: seeded, every place distinct (a 0.37° x 0.73° lattice walked
    at random), 1-10 days, most abandoned within 50 ms."""
    rng = random.Random(seed)
    total = tasks * bursts * burst
    cells = rng.sample(range(300 * 490), total)  # latitude -55..55, longitude -179..179
    searches = iter(
        Search(latitude=-55 + (cell // 490) * 0.37, longitude=-179 + (cell % 490) * 0.73,
               days=rng.randint(1, 10), abandon_at=rng.uniform(0.0, 0.05) if rng.random() < abandon_share else None)
        for cell in cells
    )
    return [[[next(searches) for _ in range(burst)] for _ in range(bursts)] for _ in range(tasks)]


def judge(status: int, headers: dict[str, str], body: bytes) -> tuple[bool, str]:
    """(answered as it should be, what it was): 200 with passes, or 429/503 OpenAI-shaped with Retry-After."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False, f"http_{status}_not_json"
    if status == 200:
        ok = isinstance(data, dict) and isinstance(data.get("passes"), list)
        return ok, "200" if ok else "200_without_passes"
    error = data.get("error") if isinstance(data, dict) else None
    if status not in (429, 503) or not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return False, f"http_{status}"
    code = str(error.get("code"))
    if code == "iss_unavailable":  # no orbital elements known yet: a 503 without a wait to suggest
        return True, f"{status} {code}"
    retry = headers.get("Retry-After", "")
    if not retry.isdigit() or int(retry) < 1:
        return False, f"http_{status}_{code}_without_retry_after"
    return True, f"{status} {code}"


async def one(session: aiohttp.ClientSession, base: str, search: Search, timeout: float,
              result: PassFloodResult) -> None:
    started = time.monotonic()
    limit = search.abandon_at if search.abandon_at is not None else timeout
    result.requests += 1
    try:
        async with asyncio.timeout(limit):
            async with session.get(f"{base}/iss/passes?{search.query()}") as response:
                body = await response.read()
                ok, what = judge(response.status, dict(response.headers), body)
    except TimeoutError:
        if search.abandon_at is not None:
            result.abandoned += 1
        else:
            result.lost["hang"] += 1
        return
    except (aiohttp.ClientError, OSError) as exc:
        result.lost[f"connection_{type(exc).__name__}"] += 1
        return
    result.slowest = max(result.slowest, time.monotonic() - started)
    (result.answered if ok else result.lost)[what] += 1


async def run_pass_flood(base: str, bursts: list[list[list[Search]]], pause: float, timeout: float,
                         deadline: float, seed: int, address: str = FLOOD_ADDRESS) -> PassFloodResult:
    """Each task sends its bursts, each burst's requests at once, a seeded pause (up to `pause` s) between
    bursts; no burst starts after `deadline` (monotonic)."""
    result = PassFloodResult()
    rng = random.Random(seed)
    pauses = [[rng.uniform(0.0, pause) for _ in task] for task in bursts]

    async def task(mine: list[list[Search]], waits: list[float]) -> None:
        # One connection per request (no keep-alive): each abandoned search is a connection the server
        # sees close, as a page's <img> tags closed by navigating away would be.
        connector = aiohttp.TCPConnector(limit=0, force_close=True, local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            for burst, wait in zip(mine, waits, strict=True):
                if time.monotonic() >= deadline:
                    return
                await asyncio.gather(*(one(session, base, search, timeout, result) for search in burst))
                await asyncio.sleep(wait)  # pacing between bursts, not waiting for anything

    await asyncio.gather(*(task(mine, waits) for mine, waits in zip(bursts, pauses, strict=True)))
    return result
