"""The events hub: ring buffer aggregation, bounded per-subscriber queues, redaction."""

from __future__ import annotations

import asyncio
import time

from services.events import EventHub, SubscriberPolicy


def _request(rid: str, conversation: str = "c1", **extra) -> dict:
    return {
        "type": "request", "id": rid, "t": time.time(), "conversation_id": conversation,
        "remote_ip": "127.0.0.1", "path": "/chat/completions", "model": "m", "stream": True,
        "messages": [{"role": "user", "content": "hi"}], "params": {}, "upstream": {"backend": "builtin"},
        **extra,
    }


def _tokens(rid: str, text: str) -> dict:
    return {"type": "tokens", "id": rid, "t": time.time(), "text": text}


def test_buffer_aggregates_one_request_from_its_events():
    hub = EventHub(10)
    hub.publish(_request("r1"))
    hub.publish({"type": "iss", "id": "r1", "t": 1.0, "block": "[ISS live data] x", "state": {"latitude": 1}})
    for piece in ("Hel", "lo", "!"):
        hub.publish(_tokens("r1", piece))
    hub.publish({"type": "done", "id": "r1", "t": 2.0, "finish_reason": "stop", "ttft_ms": 5.0})

    [record] = hub.snapshot()
    assert record["id"] == "r1"
    assert record["conversation_id"] == "c1"
    assert record["text"] == "Hello!"
    assert record["iss"]["block"] == "[ISS live data] x"
    assert record["status"] == "done"
    assert record["outcome"]["finish_reason"] == "stop"


def test_buffer_keeps_only_the_last_n_requests_and_ignores_strays():
    hub = EventHub(3)
    for i in range(10):
        hub.publish(_request(f"r{i}"))
        hub.publish(_tokens(f"r{i}", f"t{i}"))
    hub.publish(_tokens("r0", "late token for an evicted request"))
    assert [r["id"] for r in hub.snapshot()] == ["r7", "r8", "r9"]
    assert [r["text"] for r in hub.snapshot()] == ["t7", "t8", "t9"]


def test_buffer_caps_the_text_kept_per_request():
    hub = EventHub(3)
    hub.log.max_text_chars = 10
    hub.publish(_request("r1"))
    for _ in range(5):
        hub.publish(_tokens("r1", "abcd"))
    [record] = hub.snapshot()
    assert record["text"] == "abcdabcdab"
    assert record["text_truncated"] is True


def test_credentials_never_reach_the_buffer_or_subscribers():
    hub = EventHub(3)
    sub = hub.subscribe()
    hub.publish(_request(
        "r1",
        params={"temperature": 0.2, "api_key": "sk-secret", "extra": {"Authorization": "Bearer sk-x"}},
        upstream={"backend": "openai", "base_url": "https://user:pw@api.example/v1", "api_key": "sk-up"},
        headers={"Authorization": "Bearer sk-h"},
    ))
    frame = sub.drain()
    for where in (repr(hub.snapshot()), repr(frame)):
        for secret in ("sk-secret", "sk-x", "sk-up", "sk-h", "pw@"):
            assert secret not in where
    [record] = hub.snapshot()
    assert record["params"]["temperature"] == 0.2
    assert record["upstream"]["base_url"] == "https://api.example/v1"


def test_publish_never_raises_on_malformed_events():
    hub = EventHub(3)
    hub.subscribe()
    hub.publish({"type": "tokens"})
    hub.publish({"type": "request", "id": None})
    hub.publish({})
    hub.publish(None)  # type: ignore[arg-type]
    hub.publish(_request("r"))
    hub.publish({"type": "tokens", "id": "r", "t": 1.0, "text": 5})
    hub.publish({"type": "request", "id": "r", "messages": "not a list", "params": object()})


def test_token_events_coalesce_per_request_while_queued():
    hub = EventHub(10)
    sub = hub.subscribe()
    hub.publish(_request("a"))
    hub.publish(_request("b"))
    for i in range(100):
        hub.publish(_tokens("a", f"{i},"))
        hub.publish(_tokens("b", "x"))
    assert sub.queued == 4
    frame = sub.drain()
    assert frame["type"] == "events"
    kinds = [(e["type"], e["id"]) for e in frame["events"]]
    assert kinds == [("request", "a"), ("request", "b"), ("tokens", "a"), ("tokens", "b")]
    assert frame["events"][2]["text"] == "".join(f"{i}," for i in range(100))
    assert frame["events"][3]["text"] == "x" * 100
    assert "_parts" not in frame["events"][2]
    assert sub.drain() is None


def test_an_overflowing_subscriber_is_resynced_from_the_buffer_and_told_what_it_lost():
    hub = EventHub(5, SubscriberPolicy(max_events=10))
    slow = hub.subscribe()
    fast = hub.subscribe()
    for i in range(30):
        hub.publish(_request(f"r{i}"))
        fast.drain()
    assert slow.queued <= 10
    frame = slow.drain()
    assert frame["type"] == "snapshot"
    assert frame["dropped"] > 0
    assert [r["id"] for r in frame["requests"]] == [f"r{i}" for i in range(25, 30)]
    assert slow.dropped == frame["dropped"]
    # After the resync the subscriber gets live events again.
    hub.publish(_tokens("r29", "more"))
    assert slow.drain()["events"][0]["text"] == "more"
    assert fast.dropped == 0


def test_queued_bytes_are_bounded_too():
    hub = EventHub(5, SubscriberPolicy(max_events=10_000, max_bytes=50_000))
    sub = hub.subscribe()
    hub.publish(_request("r1"))
    for _ in range(1000):
        hub.publish(_tokens("r1", "y" * 100))
        assert sub.queued_bytes <= 50_000
    assert sub.drain()["type"] == "snapshot"


async def test_next_frame_wakes_on_publish_and_returns_none_after_close():
    hub = EventHub(5)
    sub = hub.subscribe()
    waiter = asyncio.ensure_future(sub.next_frame())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish(_request("r1"))
    frame = await asyncio.wait_for(waiter, 2)
    assert frame["events"][0]["id"] == "r1"

    waiter = asyncio.ensure_future(sub.next_frame())
    await asyncio.sleep(0)
    await hub.close()
    assert await asyncio.wait_for(waiter, 2) is None
    assert hub.subscribers == 0
    hub.publish(_request("r2"))  # still fine with nobody listening


def test_publish_with_no_subscriber_is_cheap():
    hub = EventHub(100)
    hub.publish(_request("r1"))
    event = _tokens("r1", "x")
    start = time.perf_counter()
    for _ in range(100_000):
        hub.publish(event)
    per_event = (time.perf_counter() - start) / 100_000
    assert per_event < 20e-6, f"{per_event * 1e6:.1f} µs per publish"
