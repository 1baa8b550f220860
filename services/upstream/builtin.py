"""The built-in offline responder: answers the question asked (where, over what, how high or fast, day or
night, passes over a place, crew) from the ISS data alone, and says plainly it is no language model."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import orjson

from services.common.errors import ApiError
from services.common.openai_format import Chunk, completion_from_chunks, estimate_tokens, text_chunks
from services.iss.accuracy import age_words
from services.iss.block import BLOCK_START
from services.iss.describe import describe_state
from services.iss.passes import local_phrase
from services.iss.places import Observer
from services.iss.queries import IssQueries
from services.iss.state import IssState
from services.upstream.base import ToolLog

OFFLINE_NOTE = (
    "(I am this server's built-in responder, not a language model: no LLM is connected, so I answer "
    "from the station's data alone. Set OPENAI_API_KEY or OPENAI_BASE_URL to talk to a real model.)"
)

_PASSES = re.compile(
    r"\b(see|spot|visible|watch|observe|view|pass(es)?|overhead|fly(ing)? over|flies over|look up|sighting)\b", re.I
)
_CREW = re.compile(r"\b(who|crew|astronauts?|cosmonauts?|people|aboard|on ?board|live there|living)\b", re.I)
_HEIGHT = re.compile(r"\b(how high|altitude|height|elevation|how far up)\b", re.I)
_SPEED = re.compile(r"\b(how fast|speed|velocity|km/h|mph)\b", re.I)
_DAY = re.compile(r"\b(day|night|dark|daylight|sunlight|sunlit|shadow|sun)\b", re.I)
_WHERE = re.compile(r"\b(where|over|above|location|position|now)\b", re.I)
# "from Paris", "over Tokyo, Japan", "in São Paulo": a capitalised name after a preposition.
_PLACE = re.compile(
    r"\b(?:from|in|over|above|near|at|for)\s+((?:[A-Z\u00C0-\u024F][\w\u00C0-\u024F'’.-]*)"
    r"(?:(?:\s+|,\s*)(?:[A-Z\u00C0-\u024F][\w\u00C0-\u024F'’.-]*|de|da|do|del|of|la|le))*)"
)
_COORDS = re.compile(r"(-?\d{1,2}(?:\.\d+)?)\s*°?\s*,\s*(-?\d{1,3}(?:\.\d+)?)")
_NOT_PLACES = {"ISS", "The", "International", "Space", "Station", "I", "UTC"}


def question_of(messages: list[dict[str, Any]]) -> str:
    """The last user message's text, without the ISS block this server appended to it."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            texts = (part.get("text") for part in content if isinstance(part, dict))
            content = " ".join(text for text in texts if isinstance(text, str))
        if not isinstance(content, str):
            return ""
        start = content.find(BLOCK_START)
        return (content[:start] if start >= 0 else content).strip()[:2000]
    return ""


def place_in(question: str) -> str | None:
    """The place a question names ('When can I see the ISS from Paris?' gives 'Paris'), if any."""
    coords = _COORDS.search(question)
    if coords:
        return f"{coords[1]}, {coords[2]}"
    for match in _PLACE.finditer(question):
        words = match[1].strip(" ,.?!")
        if words and words.split()[0] not in _NOT_PLACES:
            return words
    return None


def _crew_text(crew: dict[str, Any]) -> str:
    if not crew["known"]:
        return "I don't know who is aboard right now: the crew list (Open Notify's astros.json) has not been fetched."
    names = crew["names"]
    age = age_words(crew["age_seconds"])
    if not names:
        return f"Open Notify's crew list (fetched {age} ago) names nobody aboard the ISS."
    listed = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
    return (f"According to Open Notify's crew list, fetched {age} ago, {len(names)} people are aboard the ISS: "
            f"{listed}. That list is kept by hand and can lag a crew change.")


def _pass_line(item: dict[str, Any], observer: Observer) -> str:
    rise = datetime.fromisoformat(item["rise"]["utc"])
    set_ = datetime.fromisoformat(item["set"]["utc"])
    minutes = max(1, round((set_ - rise).total_seconds() / 60))
    return (f"{local_phrase(rise, observer)}, for about {minutes} min: rising in the {item['rise_direction']}, "
            f"highest at {item['max_elevation_deg']:.0f}° in the {item['culmination_direction']}, "
            f"setting in the {item['set_direction']}")


def _passes_text(result: dict[str, Any], observer: Observer) -> str:
    passes = result["passes"]
    visible = [item for item in passes if item["visible"]]
    where = result["place"]["name"]
    days = f"{result['days']:g}"
    if visible:
        lines = "; ".join(f"{index}) {_pass_line(item, observer)}" for index, item in enumerate(visible[:3], 1))
        text = f"Next visible passes of the ISS over {where}: {lines}."
    elif passes:
        text = (f"The ISS is not visible from {where} in the next {days} days (its passes there come in daylight "
                f"or while it is in Earth's shadow). It does pass over: {_pass_line(passes[0], observer)}.")
    else:
        return f"The ISS does not rise above {result['min_elevation_deg']:g}° over {where} in the next {days} days."
    uncertainty = max((item["timing_uncertainty_seconds"] for item in passes), default=0)
    if uncertainty >= 120:
        text += (f" These times come from {result['basis']}, so they can be off by about "
                 f"{age_words(uncertainty)}.")
    else:
        text += f" Times from {result['basis']}."
    return text


async def answer_text(question: str, iss: IssState | None, queries: IssQueries | None) -> str:
    """What the responder says: the answer to the question asked, from the station's data."""
    parts: list[str] = []
    asks_passes = bool(_PASSES.search(question))
    if asks_passes and queries is not None:
        place = place_in(question)
        if place is None:
            parts.append("Tell me a city (and its country if the name is ambiguous) or coordinates, "
                         "and I'll give you the next times the ISS passes over it.")
        else:
            try:
                observer = queries.observer(place)
                result = await queries.passes(observer, days=5.0, limit=10)
                parts.append(_passes_text(result, observer))
            except ApiError as error:
                parts.append(error.message)
    if _CREW.search(question) and queries is not None and not asks_passes:
        parts.append(_crew_text(queries.crew()))
    if iss is None:
        if not parts:
            parts.append("I can't tell where the International Space Station is right now: "
                         "no position source answered.")
        return f"{OFFLINE_NOTE} " + " ".join(parts)
    facts = []
    if _HEIGHT.search(question) and iss.altitude_km is not None:
        facts.append(f"The ISS is flying about {iss.altitude_km:.0f} km above the ground.")
    if _SPEED.search(question) and iss.speed_kmh is not None:
        facts.append(f"It moves at about {iss.speed_kmh:,.0f} km/h, one orbit every 92 minutes or so.")
    if _DAY.search(question) and (iss.sunlit is not None or iss.ground_daylight is not None):
        sun = "in sunlight" if iss.sunlit else "in Earth's shadow"
        ground = "daytime" if iss.ground_daylight else "night"
        facts.append(f"Right now the station is {sun}, and it is {ground} on the ground below it.")
    if facts and not _WHERE.search(question):
        parts.extend(facts)
        parts.append(f"({state_source(iss)})")
    elif not parts or _WHERE.search(question) or facts:
        parts.extend(facts)
        parts.append(describe_state(iss))
    return f"{OFFLINE_NOTE} " + " ".join(parts)


def state_source(state: IssState) -> str:
    return f"At {state.at.strftime('%H:%M:%S')} UTC; source: {state.source}; {state.accuracy}"


def _prompt_text(messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return " ".join(parts)


class BuiltinResponder:
    """Streams `answer_text` word by word in the same chunk format as an upstream."""

    name = "builtin"

    def __init__(self, queries: IssQueries | None = None) -> None:
        self.queries = queries

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "host": None}

    async def _chunks(self, params: dict[str, Any], iss: IssState | None) -> list[dict[str, Any]]:
        text = await answer_text(question_of(params["messages"]), iss, self.queries)
        options = params.get("stream_options") or {}
        usage = None
        if options.get("include_usage"):
            prompt = estimate_tokens(_prompt_text(params["messages"]))
            completion = estimate_tokens(text)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}
        return list(text_chunks(re.findall(r"\S+\s*", text), params["model"], usage=usage))

    async def stream(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                     ) -> AsyncGenerator[Chunk, None]:
        for item in await self._chunks(params, iss):
            yield Chunk.of(item)
            # Hand the loop back between words, as a real stream would.
            await asyncio.sleep(0)

    async def complete(self, params: dict[str, Any], iss: IssState | None, tools: ToolLog | None = None
                       ) -> bytes:
        items = await self._chunks({**params, "stream_options": {"include_usage": True}}, iss)
        return orjson.dumps(completion_from_chunks(items))

    async def close(self) -> None:
        return None
