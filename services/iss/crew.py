"""Who is aboard the station: Open Notify's astros.json, filtered to the ISS, asked rarely, kept on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from services.iss.sources import PeriodicSource, SourceError, get_text

MAX_PEOPLE = 50
MAX_NAME = 80
# A list older than this is not read to a model as who is aboard now: visiting crews stay a week or
# two, and a list this old means a week of failed refreshes (28 at the default 6 h) or a server
# started on an old disk cache. /iss/crew and the iss_crew tool still give it, with its age.
USABLE_FOR = timedelta(days=7)
# A fetch time this far ahead of the clock is a broken clock or cache, not a list to trust.
_CLOCK_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class Crew:
    """The people Open Notify lists on the ISS, and when that list was fetched."""

    names: tuple[str, ...]
    fetched_at: datetime
    source: str = "open-notify"

    def usable(self, now: datetime) -> bool:
        """Whether this list is recent enough to say who is aboard now (see USABLE_FOR)."""
        return -_CLOCK_SLACK <= now - self.fetched_at <= USABLE_FOR


def parse_astros(text: str, fetched_at: datetime) -> Crew:
    """The ISS crew from an astros.json body; raises SourceError when it is unusable."""
    try:
        data = json.loads(text)
    except ValueError:
        raise SourceError("malformed body: not JSON") from None
    if not isinstance(data, dict) or data.get("message") != "success":
        raise SourceError("malformed body: message is not 'success'")
    people = data.get("people")
    if not isinstance(people, list) or len(people) > 10 * MAX_PEOPLE:
        raise SourceError("malformed body: people missing or not a list")
    names = []
    for person in people:
        if not isinstance(person, dict) or person.get("craft") != "ISS":
            continue
        name = person.get("name")
        if isinstance(name, str) and name.strip():
            # Text only, one line, bounded: it is read to a model and shown on the console.
            names.append(" ".join(name.split())[:MAX_NAME])
    return Crew(tuple(names[:MAX_PEOPLE]), fetched_at)


class CrewSource(PeriodicSource):
    """astros.json every few hours (the list changes with crew rotations, a few times a year)."""

    name = "astros"

    def __init__(self, url: str, timeout: float, interval: float, cache_dir: Path) -> None:
        self.url = url
        super().__init__(timeout, interval, cache_dir / "astros_iss.json")

    async def _download(self, session: aiohttp.ClientSession) -> Crew:
        text = await get_text(session, self.url, self.timeout)
        return parse_astros(text, datetime.now(UTC))

    def _to_cache(self, value: Crew) -> dict[str, Any]:
        return {"names": list(value.names)}

    def _from_cache(self, data: dict[str, Any], fetched_at: datetime) -> Crew:
        names = data["names"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("names")
        return Crew(tuple(name[:MAX_NAME] for name in names[:MAX_PEOPLE]), fetched_at)
