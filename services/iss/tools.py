"""The layer's own tools, offered to the model in the OpenAI `tools` format and run here.

iss_position (where the station is now or at a moment), iss_passes (the next passes over a place)
and iss_crew (who is aboard): each answers from the tracker's data, never the network, bounded in
time; a failure is an error result the model reads, never a failed turn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.common.errors import ApiError
from services.common.futures import within
from services.iss.describe import describe_state
from services.iss.queries import IssQueries

MAX_ARGUMENTS = 4096
MAX_RESULT = 16 * 1024

TOOL_DEFINITIONS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "iss_position",
            "description": "Where the International Space Station is (latitude, longitude, what it is over, "
                           "altitude, orbital speed, sunlight) now or at a moment within a day.",
            "parameters": {
                "type": "object",
                "properties": {
                    "minutes_from_now": {"type": "number", "description": "Minutes ahead (negative: ago); "
                                         "omit for now. Between -1440 and 1440."},
                    "at": {"type": "string", "description": "An ISO 8601 time instead of minutes_from_now."},
                },
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "iss_passes",
            "description": "The next passes of the ISS over a place, with rise, highest point and set times "
                           "(UTC and local), directions, and whether each pass is visible to the eye.",
            "parameters": {
                "type": "object",
                "properties": {
                    "place": {"type": "string", "description": "A city, with its country if ambiguous, "
                              "e.g. 'Paris, France'."},
                    "latitude": {"type": "number"},
                    "longitude": {"type": "number"},
                    "days": {"type": "number", "description": "How many days ahead to look (1-10, default 5)."},
                    "visible_only": {"type": "boolean", "description": "Only passes one can see (default true)."},
                },
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "iss_crew",
            "description": "Who is aboard the ISS, from Open Notify's crew list, with the list's age.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
)


@dataclass(frozen=True)
class ToolResult:
    """What one call gave: the JSON the model reads, whether it failed, and how long it took."""

    name: str
    arguments: str
    content: str
    ok: bool
    ms: float


class IssTools:
    """Runs the layer's tools against the ISS queries, each within `timeout` seconds."""

    def __init__(self, queries: IssQueries, timeout: float = 5.0) -> None:
        self.queries = queries
        self.timeout = timeout
        self._tools: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "iss_position": self._position, "iss_passes": self._passes, "iss_crew": self._crew,
        }

    def definitions(self, taken: set[str]) -> list[dict[str, Any]]:
        """The tools to offer, leaving out any name the caller's own tools already use."""
        return [tool for tool in TOOL_DEFINITIONS if tool["function"]["name"] not in taken]

    async def run(self, name: str, arguments: str) -> ToolResult:
        """One call; a bad argument, an unknown tool, a failure or a timeout is an error result."""
        started = time.perf_counter()
        arguments = arguments if isinstance(arguments, str) else ""
        try:
            if len(arguments) > MAX_ARGUMENTS:
                raise ValueError(f"arguments longer than {MAX_ARGUMENTS} characters")
            parsed = orjson.loads(arguments or "{}")
            if not isinstance(parsed, dict):
                raise ValueError("arguments are not a JSON object")
            tool = self._tools.get(name)
            if tool is None:
                raise ValueError(f"no tool named {name[:64]!r}")
            result = await within(tool(parsed), self.timeout)
            ok = True
        except TimeoutError:
            result, ok = {"error": f"the tool took longer than {self.timeout:g} s"}, False
        except ApiError as error:
            result, ok = {"error": error.message}, False
        except (ValueError, TypeError, orjson.JSONDecodeError) as error:
            result, ok = {"error": f"bad arguments: {str(error)[:200]}"}, False
        except Exception as error:  # a bug in a tool: the model hears it failed, the turn goes on
            result, ok = {"error": f"the tool failed ({type(error).__name__})"}, False
        content = orjson.dumps(result).decode()
        if len(content) > MAX_RESULT:
            content = orjson.dumps({"error": "the result was too large"}).decode()
            ok = False
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        return ToolResult(name, arguments[:MAX_ARGUMENTS], content, ok, elapsed_ms)

    async def _position(self, args: dict[str, Any]) -> dict[str, Any]:
        at = None
        if args.get("at") is not None:
            try:
                at = datetime.fromisoformat(str(args["at"]).replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("'at' is not an ISO 8601 time") from None
        elif args.get("minutes_from_now") is not None:
            minutes = _number(args["minutes_from_now"], "minutes_from_now", -1440, 1440)
            at = datetime.now(UTC) + timedelta(minutes=minutes)
        state = await self.queries.position(at)
        return {**state.to_dict(), "description": describe_state(state)}

    async def _passes(self, args: dict[str, Any]) -> dict[str, Any]:
        place = args.get("place")
        if place is not None and not isinstance(place, str):
            raise ValueError("'place' must be a string")
        lat = _number(args["latitude"], "latitude", -90, 90) if args.get("latitude") is not None else None
        lon = _number(args["longitude"], "longitude", -180, 180) if args.get("longitude") is not None else None
        days = _number(args.get("days", 5), "days", 0.1, 10)
        visible_only = args.get("visible_only", True)
        observer = self.queries.observer(place, lat, lon)
        return await self.queries.passes(observer, days=days, visible_only=bool(visible_only), limit=5)

    async def _crew(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.queries.crew()


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'{name}' must be a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"'{name}' must be from {low:g} to {high:g}")
    return float(value)
