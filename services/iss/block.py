"""The ISS block and where it goes in the messages. Pure functions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from services.iss.crew import Crew
from services.iss.describe import describe_crew, describe_state
from services.iss.state import IssState

BLOCK_START = "[ISS live data]"
BLOCK_END = "[/ISS live data]"


def iss_block(state: IssState | None, now: datetime | None = None, crew: Crew | None = None) -> str:
    """The short, clearly delimited text a model reads about the station right now: its position,
    and who is aboard when a usable crew list is at hand (one line, a few names)."""
    now = now or datetime.now(UTC)
    if state is None:
        moment = now.strftime("%Y-%m-%d %H:%M:%S UTC")
        body = (
            f"The ISS position is unavailable right now ({moment}): no source answered. "
            "Say so if asked; do not guess a position."
        )
    else:
        body = describe_state(state)
    aboard = describe_crew(crew, now)
    if aboard:
        body = f"{body} {aboard}"
    return f"{BLOCK_START} {body} {BLOCK_END}"


class BlockMemo:
    """The ISS block and the state's record (for the console) as the chat path reads them, made once per
    state: the tracker hands out one state object for each whole second, so the requests within it share
    one text (describe_state ~50 µs and to_dict ~24 µs a request otherwise, before the upstream is asked).
    The record is shared by those requests' events and never changed."""

    def __init__(self) -> None:
        self._last: tuple[IssState, Crew | None, str, dict[str, Any]] | None = None

    def of(self, state: IssState | None, crew: Crew | None) -> tuple[str, dict[str, Any] | None]:
        if state is None:
            return iss_block(None, crew=crew), None  # says the moment it was asked: never kept
        last = self._last
        if last is not None and last[0] is state and last[1] is crew:
            return last[2], last[3]
        block, record = iss_block(state, crew=crew), state.to_dict()
        self._last = (state, crew, block, record)
        return block, record


def inject(messages: list[dict[str, Any]], block: str, mode: str) -> list[dict[str, Any]]:
    """A new message list with the block added; the caller's messages are left as they were.

    mode "user" appends the block to the last user message, so the prompt prefix stays stable
    for upstream prompt caching; "system" adds it as a trailing system message; "off" adds
    nothing. Without any user message, "user" falls back to a trailing system message.
    """
    if mode == "off":
        return list(messages)
    if mode == "user":
        for index in range(len(messages) - 1, -1, -1):
            if messages[index].get("role") == "user":
                result = list(messages)
                result[index] = _with_block(messages[index], block)
                return result
    return [*messages, {"role": "system", "content": block}]


def _with_block(message: dict[str, Any], block: str) -> dict[str, Any]:
    content = message.get("content")
    updated = dict(message)
    if isinstance(content, list):
        # Non-text parts (images, audio) pass through untouched; the block is one more text part.
        updated["content"] = [*copy.copy(content), {"type": "text", "text": block}]
    elif content:
        updated["content"] = f"{content}\n\n{block}"
    else:
        updated["content"] = block
    return updated
