"""The console gets a request's tokens joined: the first at once, then one event per interval, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from services.chat.endings import Ending, Outcome
from services.chat.exchange import Exchange


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.published = asyncio.Event()

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.published.set()


def _exchange(hub: Recorder) -> Exchange:
    return Exchange(hub, request_id="req_b", conversation_id=None, remote_ip="127.0.0.1", path="/v1/chat/completions")


def _texts(hub: Recorder) -> list[str]:
    return [event["text"] for event in hub.events if event["type"] == "tokens"]


async def test_tokens_reach_the_console_joined_first_at_once_and_all_by_the_end():
    hub = Recorder()
    exchange = _exchange(hub)
    words = [f"w{index} " for index in range(200)]
    exchange.token(words[0])
    assert _texts(hub) == ["w0 "]  # the first token is not held back
    for word in words[1:]:
        exchange.token(word)
    assert _texts(hub) == ["w0 "]  # the rest wait for the interval, as one event
    exchange.end(Ending(Outcome.DONE, 200, finish_reason="stop"))
    texts = _texts(hub)
    assert "".join(texts) == "".join(words)
    assert len(texts) == 2
    assert hub.events[-1]["type"] == "done"


async def test_a_batch_is_published_once_the_interval_passes():
    hub = Recorder()
    exchange = _exchange(hub)
    exchange.token("a")
    exchange.token("b")
    exchange.token("c")
    hub.published.clear()
    await asyncio.wait_for(hub.published.wait(), 5.0)  # the batch's timer (TOKEN_BATCH_S) fires it
    assert _texts(hub) == ["a", "bc"]


async def test_another_event_never_overtakes_the_tokens_before_it():
    hub = Recorder()
    exchange = _exchange(hub)
    exchange.token("before ")
    exchange.token("the tool ")
    exchange.layer_tool(name="iss_position", arguments="{}", result="ok", ok=True, ms=1.0, round=0)
    exchange.token("after")
    exchange.end(Ending(Outcome.DONE, 200, finish_reason="stop"))
    kinds = [(event["type"], event.get("text")) for event in hub.events]
    assert kinds == [("tokens", "before "), ("tokens", "the tool "), ("iss_tool", None), ("tokens", "after"),
                     ("done", None)]
