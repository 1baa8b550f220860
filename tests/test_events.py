"""The events hub: ring buffer aggregation, shared batches with per-socket cursors, redaction."""

from __future__ import annotations

import asyncio
import time

import orjson

from services.events import EventHub, SubscriberPolicy, coalesce


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


def _frames(sub) -> list[dict]:
    return [orjson.loads(m) for m in sub.drain()]


def _events(sub) -> list[dict]:
    return [e for f in _frames(sub) if f["type"] == "events" for e in f["events"]]


def test_credentials_never_reach_the_buffer_or_subscribers():
    hub = EventHub(3)
    sub = hub.subscribe()
    hub.publish(_request(
        "r1",
        params={"temperature": 0.2, "api_key": "sk-secret", "extra": {"Authorization": "Bearer sk-x"}},
        upstream={"backend": "openai", "base_url": "https://user:pw@api.example/v1", "api_key": "sk-up"},
        headers={"Authorization": "Bearer sk-h"},
    ))
    sent = "".join(sub.drain())
    for where in (repr(hub.snapshot()), sent):
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


def test_coalesce_merges_each_requests_tokens_and_keeps_the_order():
    events = [
        {"type": "request", "id": "a"}, {"type": "tokens", "id": "a", "text": "1"},
        {"type": "tokens", "id": "b", "text": "x"}, {"type": "tokens", "id": "a", "text": "2"},
        {"type": "tokens", "id": "b", "text": "y"}, {"type": "done", "id": "a"},
    ]
    merged = coalesce(events)
    assert [(e["type"], e["id"], e.get("text")) for e in merged] == [
        ("request", "a", None), ("tokens", "a", "12"), ("tokens", "b", "xy"), ("done", "a", None),
    ]
    assert events[1]["text"] == "1"  # the published events themselves are left alone


def test_events_reach_every_subscriber_in_one_shared_batch():
    hub = EventHub(10)
    one, two = hub.subscribe(), hub.subscribe()
    hub.publish(_request("a"))
    for i in range(100):
        hub.publish(_tokens("a", f"{i},"))
    first, second = one.drain(), two.drain()
    assert first == second and len(first) == 1
    assert first[0] is second[0]  # encoded once, shared
    events = orjson.loads(first[0])["events"]
    assert [e["type"] for e in events] == ["request", "tokens"]
    assert events[1]["text"] == "".join(f"{i}," for i in range(100))
    assert one.drain() == []
    assert hub.backlog_bytes == len(first[0])


def test_no_subscriber_means_no_batches_and_a_new_one_gets_nothing_twice():
    hub = EventHub(10)
    hub.publish(_request("a"))
    hub.publish(_tokens("a", "before"))
    assert hub.backlog_bytes == 0 and not hub._pending
    early = hub.subscribe()
    hub.publish(_tokens("a", "pending"))  # batched but not yet flushed...
    late = hub.subscribe()  # ...so this one's replay (snapshot) already has it
    assert hub.snapshot()[0]["text"] == "beforepending"
    hub.publish(_tokens("a", "!"))
    assert [e["text"] for e in _events(early)] == ["pending", "!"]
    assert [e["text"] for e in _events(late)] == ["!"]


def test_a_subscriber_that_falls_behind_the_backlog_is_resynced_and_told_what_it_lost():
    hub = EventHub(5, SubscriberPolicy(max_frames=10))
    slow = hub.subscribe()
    fast = hub.subscribe()
    for i in range(30):
        hub.publish(_request(f"r{i}"))
        hub.flush()
        assert len(fast.drain()) == 1
    assert len(hub._frames) == 10
    [frame] = _frames(slow)
    assert frame["type"] == "snapshot" and frame["reason"] == "overflow"
    assert frame["dropped"] == 20  # r0..r19 went before it was sent
    assert [r["id"] for r in frame["requests"]] == [f"r{i}" for i in range(25, 30)]
    assert slow.dropped == 20 and fast.dropped == 0
    # After the resync it gets live events again, and nothing it already has.
    hub.publish(_tokens("r29", "more"))
    assert [e["text"] for e in _events(slow)] == ["more"]


def test_the_shared_backlog_is_bounded_in_bytes():
    hub = EventHub(5, SubscriberPolicy(max_bytes=50_000))
    hub.subscribe()
    hub.publish(_request("r1"))
    for _ in range(1000):
        hub.publish(_tokens("r1", "y" * 100))
        hub.flush()
        assert hub.backlog_bytes <= 50_000


def test_what_one_socket_is_handed_at_a_time_is_bounded():
    hub = EventHub(5, SubscriberPolicy(max_send_bytes=1000))
    sub = hub.subscribe()
    for i in range(50):
        hub.publish(_tokens("r1", "z" * 300) | {"id": f"r{i}"})
        hub.flush()
    sizes = []
    while messages := sub.drain():
        sizes.append(sum(len(m) for m in messages))
    assert len(sizes) > 1 and max(sizes) <= 1000 + 400


def test_resync_on_request_and_private_pushes():
    hub = EventHub(5)
    sub = hub.subscribe()
    hub.publish(_request("r1"))
    sub.resync()
    sub.push({"type": "iss_state", "id": "-", "state": {"latitude": 1}})
    sub.push({"type": "iss_state", "id": "-", "state": {"latitude": 2}})
    frames = _frames(sub)
    assert frames[0]["type"] == "snapshot" and frames[0]["reason"] == "requested" and frames[0]["dropped"] == 0
    assert [r["id"] for r in frames[0]["requests"]] == ["r1"]
    assert frames[1]["events"] == [{"type": "iss_state", "id": "-", "state": {"latitude": 2}}]
    assert sub.drain() == []


async def test_batches_are_cut_by_the_loop_and_wake_waiting_subscribers():
    hub = EventHub(5, SubscriberPolicy(batch_interval=0.05))
    sub = hub.subscribe()
    waiter = asyncio.ensure_future(sub.next_messages())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish(_request("r1"))
    hub.publish(_tokens("r1", "a"))
    messages = await asyncio.wait_for(waiter, 2)
    assert [e["type"] for e in orjson.loads(messages[0])["events"]] == ["request", "tokens"]

    waiter = asyncio.ensure_future(sub.next_messages())
    await asyncio.sleep(0)
    await hub.close()
    assert await asyncio.wait_for(waiter, 2) is None
    assert hub.subscribers == 0
    hub.publish(_request("r2"))  # still fine with nobody listening


async def test_ten_stuck_subscribers_share_one_bounded_backlog():
    # What a publish costs is a figure of `python -m bench.costs`; here, that the hub encodes each
    # batch once for every socket, and keeps no more than its cap for sockets that never read.
    async def fill(hub: EventHub) -> None:
        hub.publish(_request("r1"))
        for index in range(20_000):
            hub.publish(_tokens("r1", f"token {index} "))
            if index % 100 == 0:
                await asyncio.sleep(0)
        hub.flush()

    # 20,000 tokens make about 250 KB of batches: four times what the backlog may hold.
    policy = SubscriberPolicy(max_pending=100, max_bytes=64 * 1024)
    one, ten = EventHub(100, policy), EventHub(100, policy)
    one.subscribe()
    ten_readers = [ten.subscribe() for _ in range(10)]
    await fill(one)
    await fill(ten)
    # Equal but for the timestamps' digits: a copy per socket would hold ten times as much.
    assert abs(ten.backlog_bytes - one.backlog_bytes) < one.backlog_bytes * 0.05
    assert 32 * 1024 < ten.backlog_bytes <= 64 * 1024
    assert all(reader.behind > 0 for reader in ten_readers)
