"""The relay as plain async code: payloads in, SSE events out, each recorded on the exchange."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from services.chat.endings import Ending, Outcome
from services.chat.exchange import Exchange
from services.chat.relay import Relay
from services.common.errors import ApiError
from services.common.openai_format import Chunk


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def _exchange(hub: Recorder) -> Exchange:
    return Exchange(hub, request_id="req_1", conversation_id="c", remote_ip="127.0.0.1", path="/v1/chat/completions")


async def _payloads(*items: Any) -> AsyncIterator[Chunk]:
    for item in items:
        yield Chunk(item if isinstance(item, bytes) else orjson.dumps(item))


def _chunk(delta: dict[str, Any], finish: str | None = None, model: str = "up-model") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def test_events_are_the_payloads_byte_for_byte_and_recorded():
    hub = Recorder()
    exchange = _exchange(hub)
    relay = Relay(exchange)
    items = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}), _chunk({}, "stop"),
             {"id": "x", "choices": [], "usage": {"completion_tokens": 1}}]
    events = [event async for event in relay.events(_payloads(*items))]
    assert events == [b"data: " + orjson.dumps(item) + b"\n\n" for item in items]
    assert relay.finish_reason == "stop" and relay.usage == {"completion_tokens": 1}
    assert relay.content and exchange.upstream_model == "up-model"
    assert [e["text"] for e in hub.events if e["type"] == "tokens"] == ["Hi"]


async def test_a_role_chunk_alone_is_not_content():
    relay = Relay(_exchange(Recorder()))
    [event async for event in relay.events(_payloads(_chunk({"role": "assistant", "content": ""})))]
    assert relay.payloads == 1 and not relay.content


@pytest.mark.parametrize(("payloads", "code"), [
    ((), "upstream_empty"),
    ((b"{not json",), "upstream_bad_chunk"),
    ((b'{"choices": [42]}',), "upstream_bad_chunk"),
    (({"error": {"message": "boom sk-abcdefghijklmnop"}},), "upstream_error"),
])
async def test_what_is_not_a_chunk_is_an_upstream_error(payloads, code):
    relay = Relay(_exchange(Recorder()), secrets=("boom",))
    with pytest.raises(ApiError) as caught:
        [event async for event in relay.events(_payloads(*payloads))]
    assert caught.value.code == code and caught.value.status == 502
    assert "sk-abc" not in caught.value.message and "boom" not in caught.value.message


async def test_the_outcome_is_recorded_once_with_status_timings_and_model():
    hub = Recorder()
    exchange = _exchange(hub)
    exchange.answered_by("up-model")
    exchange.end(Ending(Outcome.CANCELLED, 499))
    exchange.end(Ending(Outcome.DONE, 200))  # too late: the first outcome stands
    [end] = [e for e in hub.events if e["type"] in {"done", "cancelled", "superseded", "error"}]
    assert end["type"] == "cancelled" and end["outcome"] == "cancelled" and end["status"] == 499
    assert end["upstream_model"] == "up-model" and end["total_ms"] >= 0
    assert exchange.outcome is Outcome.CANCELLED
