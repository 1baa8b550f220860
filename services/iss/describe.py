"""The one or two lines a language model reads about an IssState."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime

from services.iss.accuracy import age_words, round_km
from services.iss.crew import Crew
from services.iss.state import IssState

# The crew line rides on every turn: a few names, each short, is what a model needs to answer
# "who is up there?" (the iss_crew tool has the whole list).
CREW_NAMES = 10
CREW_NAME_CHARS = 40
# What a person's name is made of; anything else in a name from outside (brackets that could close
# the block, markup, control characters, emoji) is dropped before a model reads it.
_NOT_NAME = re.compile(r"[^\w .'’-]|_")

# Country names read with "the" in English ("over the United States", "over the Philippines").
_THE = re.compile(
    r"^(United |Democratic |Republic |Federated |Central African|Czech Republic|Dominican Republic)"
    r"|(Islands|Lands|Netherlands|Philippines|Maldives|Bahamas|Gambia|Comoros|Seychelles|Emirates)$"
)


def over_phrase(name: str, water: bool | None) -> str:
    """'the North Atlantic Ocean', 'the United States', 'France'."""
    if water or _THE.search(name):
        return f"the {name}"
    return name


def coordinates(latitude: float, longitude: float) -> str:
    """'48.85°N, 2.35°E'."""
    return (f"{abs(latitude):.2f}°{'N' if latitude >= 0 else 'S'}, "
            f"{abs(longitude):.2f}°{'E' if longitude >= 0 else 'W'}")


def _where(state: IssState) -> str:
    text = coordinates(state.latitude, state.longitude)
    if state.over:
        text += f", over {over_phrase(state.over, state.over_water)}"
    if state.nearest_city and state.nearest_city_km is not None:
        if state.nearest_city_km < 25:
            text += f", right above {state.nearest_city}"
        else:
            direction = f" {state.nearest_city_direction}" if state.nearest_city_direction else ""
            text += f", about {round_km(state.nearest_city_km)}{direction} of {state.nearest_city}"
    return text


def _conditions(state: IssState) -> list[str]:
    parts = []
    if state.altitude_km is not None:
        parts.append(f"altitude {state.altitude_km:.0f} km")
    if state.speed_kmh is not None:
        parts.append(f"orbital speed {state.speed_kmh:,.0f} km/h")
    if state.sunlit is not None:
        parts.append("in sunlight" if state.sunlit else "in Earth's shadow")
    if state.ground_daylight is not None:
        parts.append("daytime on the ground below" if state.ground_daylight else "night on the ground below")
    return parts


def describe_state(state: IssState) -> str:
    """Position, what it's over, units, the UTC time it describes, its source and accuracy."""
    moment = state.at.strftime("%Y-%m-%d %H:%M:%S")
    estimate = "is roughly estimated to be" if state.rough else "is"
    first = f"At {moment} UTC the ISS {estimate} at {_where(state)}"
    conditions = _conditions(state)
    if conditions:
        first += "; " + ", ".join(conditions)
    return f"{first}. Source: {state.source}; {state.accuracy}."


def _plain_name(name: str) -> str:
    plain = " ".join(_NOT_NAME.sub(" ", unicodedata.normalize("NFC", name)).split())
    return plain if len(plain) <= CREW_NAME_CHARS else plain[:CREW_NAME_CHARS - 1].rstrip() + "…"


def describe_crew(crew: Crew | None, now: datetime) -> str | None:
    """'Aboard the ISS (Open Notify's crew list, 5 h old): 3 people: A, B, C.', or None when the list is
    unknown, too old to say who is aboard now (Crew.usable), or names nobody."""
    if crew is None or not crew.usable(now):
        return None
    names = [plain for plain in (_plain_name(name) for name in crew.names) if plain]
    if not names:
        return None
    shown = ", ".join(names[:CREW_NAMES])
    if len(names) > CREW_NAMES:
        shown += f" and {len(names) - CREW_NAMES} more"
    people = "1 person" if len(names) == 1 else f"{len(names)} people"
    age = age_words((now - crew.fetched_at).total_seconds())
    return f"Aboard the ISS (Open Notify's crew list, {age} old): {people}: {shown}."
