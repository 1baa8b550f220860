"""The events hub: one shared suite every implementation passes, then the in-process fan-out's bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import orjson
import pytest

from services.console import EVENT_TYPES, OUTCOMES, Hub, MemoryHub, SubscriberPolicy, coalesce
from services.console.fanout import Fanout
from services.console.redis_hub import RedisHub

HubFactory = Callable[..., Awaitable[Hub]]


def _request(rid: str, conversation: str = "c1", **extra) -> dict:
    return {
        "type": "request", "id": rid, "t": time.time(), "conversation_id": conversation,
        "remote_ip": "127.0.0.1", "path": "/chat/completions", "model": "m", "stream": True,
        "messages": [{"role": "user", "content": "hi"}], "params": {}, "upstream": {"backend": "builtin"},
        **extra,
    }


def _tokens(rid: str, text: str) -> dict:
    return {"type": "tokens", "id": rid, "t": time.time(), "text": text}


def _frames(sub) -> list[dict]:
    return [orjson.loads(m) for m in sub.drain()]


def _events(sub) -> list[dict]:
    """The events a subscription is handed now, less the hub's own pushes about its cluster link."""
    return [e for f in _frames(sub) if f["type"] == "events" for e in f["events"] if e["type"] != "cluster"]


# ---- the shared suite: every hub implementation ------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def make_hub(request, io_loop, tmp_path) -> Iterator[HubFactory]:
    """Builds hubs of one implementation, each closed after the test (Redis: a real redis-server)."""
    made: list[Hub] = []
    redis = None
    if request.param == "redis":
        from tests.redis_server import RedisServer

        redis = RedisServer(tmp_path / "redis")
        redis.start()

    async def build(buffer_size: int = 10, policy: SubscriberPolicy | None = None) -> Hub:
        if redis is None:
            hub: Hub = MemoryHub(buffer_size, policy)
        else:
            hub = RedisHub(redis.url, buffer_size, policy, key=f"test:{len(made)}")
            await hub.start()
            assert await hub.settle(10), "the hub did not connect"
        made.append(hub)
        return hub

    yield build
    for hub in made:
        io_loop.run_sync(hub.close)
    if redis is not None:
        redis.stop()


async def test_buffer_aggregates_one_request_from_its_events(make_hub):
    hub = await make_hub(10)
    hub.publish(_request("r1"))
    hub.publish({"type": "iss", "id": "r1", "t": 1.0, "block": "[ISS live data] x", "state": {"latitude": 1}})
    for piece in ("Hel", "lo", "!"):
        hub.publish(_tokens("r1", piece))
    hub.publish({"type": "done", "id": "r1", "t": 2.0, "finish_reason": "stop", "ttft_ms": 5.0})
    assert await hub.settle()

    [record] = hub.snapshot()
    assert record["id"] == "r1"
    assert record["conversation_id"] == "c1"
    assert record["text"] == "Hello!"
    assert record["iss"]["block"] == "[ISS live data] x"
    assert record["status"] == "done"
    assert record["outcome"]["finish_reason"] == "stop"


async def test_every_outcome_in_the_table_ends_a_record(make_hub):
    hub = await make_hub(len(OUTCOMES))
    for kind in OUTCOMES:
        hub.publish(_request(f"r-{kind}"))
        hub.publish({"type": kind, "id": f"r-{kind}", "t": 2.0})
    assert await hub.settle()
    assert [r["status"] for r in hub.snapshot()] == list(OUTCOMES)


async def test_buffer_keeps_only_the_last_n_requests_and_ignores_strays(make_hub):
    hub = await make_hub(3)
    for i in range(10):
        hub.publish(_request(f"r{i}"))
        hub.publish(_tokens(f"r{i}", f"t{i}"))
    hub.publish(_tokens("r0", "late token for an evicted request"))
    assert await hub.settle()
    assert [r["id"] for r in hub.snapshot()] == ["r7", "r8", "r9"]
    assert [r["text"] for r in hub.snapshot()] == ["t7", "t8", "t9"]


async def test_credentials_never_reach_the_buffer_or_subscribers(make_hub):
    hub = await make_hub(3)
    sub = hub.subscribe()
    hub.publish(_request(
        "r1",
        params={"temperature": 0.2, "api_key": "sk-secret", "extra": {"Authorization": "Bearer sk-x"}},
        upstream={"backend": "openai", "base_url": "https://user:pw@api.example/v1", "api_key": "sk-up"},
        headers={"Authorization": "Bearer sk-h"},
    ))
    assert await hub.settle()
    sent = "".join(sub.drain())
    assert '"r1"' in sent
    for where in (repr(hub.snapshot()), sent):
        for secret in ("sk-secret", "sk-x", "sk-up", "sk-h", "pw@"):
            assert secret not in where
    [record] = hub.snapshot()
    assert record["params"]["temperature"] == 0.2
    assert record["upstream"]["base_url"] == "https://api.example/v1"


async def test_a_huge_request_is_bounded_before_it_is_kept_or_sent(make_hub):
    hub = await make_hub(3)
    sub = hub.subscribe()
    hub.publish(_request("r1", messages=[{"role": "user", "content": "x" * 1_000_000}]))
    assert await hub.settle()
    assert sum(len(m) for m in sub.drain()) < 100_000
    kept = hub.snapshot()[0]["messages"][0]["content"]
    assert "more characters not kept" in kept and len(kept) < 20_000


async def test_publish_never_raises_on_malformed_events(make_hub):
    hub = await make_hub(3)
    sub = hub.subscribe()
    sub.drain()  # its greeting (the latest pushes)
    # Without a request id there is nothing to file it under: dropped, kept nowhere, sent nowhere.
    hub.publish({"type": "tokens"})
    hub.publish({"type": "request", "id": None})
    hub.publish({})
    hub.publish(None)  # type: ignore[arg-type]
    assert await hub.settle()
    assert hub.snapshot() == []
    assert sub.drain() == []

    hub.publish(_request("r"))
    hub.publish({"type": "tokens", "id": "r", "t": 1.0, "text": 5})
    hub.publish({"type": "tokens", "id": "r", "t": 1.0, "text": "ok"})
    hub.publish({"type": "no-such-type", "id": "r", "t": 1.0})
    hub.publish({"type": "request", "id": "r", "messages": "not a list", "params": object()})
    assert await hub.settle()
    # The request is kept, and what was not a string is kept as its text.
    [record] = hub.snapshot()
    assert record["id"] == "r" and record["status"] == "streaming" and record["text"] == "5ok"
    # The consoles got the request as it first came, and a value JSON cannot hold as text, not as
    # an error or a lost frame.
    events = _events(sub)
    assert events and {e["id"] for e in events} == {"r"}
    assert events[0]["type"] == "request" and events[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert isinstance(events[-1]["params"], str)


async def test_publish_leaves_the_work_for_after_the_publishers_next_step(make_hub):
    """publish() only queues: a step scheduled right after it (the chat path's upstream request,
    its next token) runs before the event is sanitized and delivered, and delivery keeps the order."""
    hub = await make_hub()
    sub = hub.subscribe()
    _frames(sub)
    order: list[str] = []
    delivered = hub.fanout.published
    hub.publish(_request("r1", messages=[{"role": "user", "content": "x" * 100_000}]))
    hub.publish(_tokens("r1", "one"))
    assert hub.waiting == 2 and hub.fanout.published == delivered  # queued: nothing sanitized or sent yet

    async def next_step() -> None:
        order.append(f"task saw {hub.waiting} waiting")

    task = asyncio.ensure_future(next_step())
    hub.publish(_tokens("r1", " two"))
    await task
    for _ in range(100):  # a few loop iterations at most
        if hub.fanout.published - delivered >= 3:
            break
        await asyncio.sleep(0)
    assert order == ["task saw 3 waiting"]  # the step ran before the hub's work
    assert hub.waiting == 0
    assert await hub.settle()
    hub.flush()
    record = hub.snapshot()[-1]
    assert record["id"] == "r1" and record["text"] == "one two"
    assert len(record["messages"][0]["content"]) < 100_000  # sanitized (bounded) on the way


async def test_events_reach_every_subscriber_in_one_shared_batch(make_hub):
    hub = await make_hub(10)
    one, two = hub.subscribe(), hub.subscribe()
    one.drain(), two.drain()  # each socket's greeting (the latest pushes)
    hub.publish(_request("a"))
    for i in range(100):
        hub.publish(_tokens("a", f"{i},"))
    assert await hub.settle()
    first, second = one.drain(), two.drain()
    assert first == second
    assert all(a is b for a, b in zip(first, second, strict=True))  # encoded once, shared
    events = [e for m in first for e in orjson.loads(m)["events"]]
    assert events[0]["type"] == "request"
    assert "".join(e["text"] for e in events if e["type"] == "tokens") == "".join(f"{i}," for i in range(100))
    assert len(first) <= 3  # batched, not a frame per event
    assert one.drain() == []


async def test_each_requests_events_keep_their_order(make_hub):
    hub = await make_hub(10)
    sub = hub.subscribe()
    for i in range(3):
        hub.publish(_request(f"r{i}"))
    for n in range(50):
        for i in range(3):
            hub.publish(_tokens(f"r{i}", f"{n} "))
    for i in range(3):
        hub.publish({"type": "done", "id": f"r{i}", "t": time.time()})
    assert await hub.settle()
    events = _events(sub)
    for i in range(3):
        mine = [e for e in events if e["id"] == f"r{i}"]
        assert mine[0]["type"] == "request" and mine[-1]["type"] == "done"
        assert "".join(e["text"] for e in mine if e["type"] == "tokens") == "".join(f"{n} " for n in range(50))


async def test_a_new_subscriber_gets_nothing_twice(make_hub):
    hub = await make_hub(10)
    hub.publish(_request("a"))
    hub.publish(_tokens("a", "before"))
    assert await hub.settle()
    early = hub.subscribe()
    hub.publish(_tokens("a", "pending"))
    assert await hub.settle()
    late = hub.subscribe()
    replay = hub.snapshot()  # the replay a socket gets, read in the same tick as subscribe()
    hub.publish(_tokens("a", "!"))
    assert await hub.settle()
    assert [e["text"] for e in _events(early)] == ["pending", "!"]
    assert replay[0]["text"] + "".join(e["text"] for e in _events(late)) == "beforepending!"


async def test_resync_on_request_and_station_broadcasts(make_hub):
    hub = await make_hub(5)
    hub.broadcast({"type": "iss_state", "id": "-", "state": {"latitude": 0}})
    sub = hub.subscribe()
    assert [e["state"] for e in _events(sub)] == [{"latitude": 0}]  # the latest greets a new socket
    hub.publish(_request("r1"))
    assert await hub.settle()
    sub.resync()
    hub.broadcast({"type": "iss_state", "id": "-", "state": {"latitude": 1}})
    hub.broadcast({"type": "iss_state", "id": "-", "state": {"latitude": 2}})
    frames = _frames(sub)
    assert frames[0]["type"] == "snapshot" and frames[0]["reason"] == "requested" and frames[0]["dropped"] == 0
    assert [r["id"] for r in frames[0]["requests"]] == ["r1"]
    assert [e["state"]["latitude"] for f in frames[1:] for e in f["events"] if e["type"] == "iss_state"] == [2]
    hub.broadcast({"type": "iss_state", "id": "-", "state": {"latitude": 3}})
    assert await hub.settle()
    assert [e["state"]["latitude"] for e in _events(sub)] == [3]
    assert sub.drain() == []
    assert hub.snapshot()[0]["id"] == "r1"  # station pushes are not requests


async def test_waiting_subscribers_are_woken_and_released_on_close(make_hub):
    hub = await make_hub(5, SubscriberPolicy(batch_interval=0.05))
    sub = hub.subscribe()
    sub.drain()  # its greeting
    waiter = asyncio.ensure_future(sub.next_messages())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish(_request("r1"))
    hub.publish(_tokens("r1", "a"))
    messages = await asyncio.wait_for(waiter, 5)
    seen = [e["type"] for m in messages for e in orjson.loads(m)["events"]]
    while "tokens" not in seen:
        seen += [e["type"] for m in await asyncio.wait_for(sub.next_messages(), 5) for e in orjson.loads(m)["events"]]
    assert seen == ["request", "tokens"]

    waiter = asyncio.ensure_future(sub.next_messages())
    await asyncio.sleep(0)
    await hub.close()
    assert await asyncio.wait_for(waiter, 2) is None
    assert hub.subscribers == 0
    hub.publish(_request("r2"))  # still fine with nobody listening


def test_the_event_table_is_what_the_page_reads():
    assert set(OUTCOMES) >= {"done", "cancelled", "error"}
    assert EVENT_TYPES["tokens"] == "text" and EVENT_TYPES["iss_state"] == "station"


# ---- the in-process fan-out: batching and bounds -------------------------------------------------


def test_buffer_caps_the_text_kept_per_request():
    fanout = Fanout(3, record_bytes=10)
    fanout.publish(_request("r1"))
    for _ in range(5):
        fanout.publish(_tokens("r1", "abcd"))
    [record] = fanout.snapshot()
    assert record["text"] == "abcdabcdab… [10 more bytes not kept]"
    assert record["text_truncated"] is True


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


def test_coalesce_never_moves_text_across_another_event_of_its_request():
    events = [
        {"type": "tokens", "id": "a", "text": "Let me "}, {"type": "tokens", "id": "a", "text": "check. "},
        {"type": "tokens", "id": "b", "text": "x"}, {"type": "iss_tool", "id": "a", "name": "iss_crew"},
        {"type": "tokens", "id": "b", "text": "y"}, {"type": "tokens", "id": "a", "text": "Seven"},
        {"type": "tokens", "id": "a", "text": " people."},
    ]
    assert [(e["type"], e["id"], e.get("text")) for e in coalesce(events)] == [
        ("tokens", "a", "Let me check. "), ("tokens", "b", "xy"), ("iss_tool", "a", None),
        ("tokens", "a", "Seven people."),
    ]


def test_no_subscriber_means_no_batches():
    fanout = Fanout(10)
    fanout.publish(_request("a"))
    fanout.publish(_tokens("a", "before"))
    assert fanout.backlog_bytes == 0 and fanout.backlog_frames == 0
    sub = fanout.subscribe()
    fanout.publish(_tokens("a", "x"))
    assert [e["text"] for e in _events(sub)] == ["x"]
    assert fanout.backlog_bytes > 0


def test_a_subscriber_that_falls_behind_the_backlog_is_resynced_and_told_what_it_lost():
    fanout = Fanout(5, SubscriberPolicy(max_frames=10))
    slow = fanout.subscribe()
    fast = fanout.subscribe()
    for i in range(30):
        fanout.publish(_request(f"r{i}"))
        fanout.flush()
        assert len(fast.drain()) == 1
    assert fanout.backlog_frames == 10
    assert slow.fell_behind and not fast.fell_behind
    [frame] = _frames(slow)
    assert frame["type"] == "snapshot" and frame["reason"] == "overflow"
    assert frame["dropped"] == 20  # r0..r19 went before it was sent
    assert [r["id"] for r in frame["requests"]] == [f"r{i}" for i in range(25, 30)]
    assert slow.dropped == 20 and fast.dropped == 0
    # After the resync it gets live events again, and nothing it already has.
    fanout.publish(_tokens("r29", "more"))
    assert [e["text"] for e in _events(slow)] == ["more"]


def test_the_shared_backlog_is_bounded_in_bytes():
    fanout = Fanout(5, SubscriberPolicy(max_bytes=50_000))
    fanout.subscribe()
    fanout.publish(_request("r1"))
    for _ in range(1000):
        fanout.publish(_tokens("r1", "y" * 100))
        fanout.flush()
        assert fanout.backlog_bytes <= 50_000


def test_what_one_socket_is_handed_at_a_time_is_bounded():
    fanout = Fanout(5, SubscriberPolicy(max_send_bytes=1000))
    sub = fanout.subscribe()
    for i in range(50):
        fanout.publish(_tokens("r1", "z" * 300) | {"id": f"r{i}"})
        fanout.flush()
    sizes = []
    while messages := sub.drain():
        sizes.append(sum(len(m) for m in messages))
    assert len(sizes) > 1 and max(sizes) <= 1000 + 400


async def test_ten_stuck_subscribers_share_one_bounded_backlog():
    # What a publish costs is a figure of `python -m bench.costs`; here, that the hub encodes each
    # batch once for every socket, and keeps no more than its cap for sockets that never read.
    async def fill(hub: MemoryHub) -> None:
        hub.publish(_request("r1"))
        for index in range(20_000):
            hub.publish(_tokens("r1", f"token {index} "))
            if index % 100 == 0:
                await asyncio.sleep(0)
        hub.flush()

    # 20,000 tokens make about 250 KB of batches: four times what the backlog may hold.
    policy = SubscriberPolicy(max_pending=100, max_bytes=64 * 1024)
    one, ten = MemoryHub(100, policy), MemoryHub(100, policy)
    one.subscribe()
    ten_readers = [ten.subscribe() for _ in range(10)]
    await fill(one)
    await fill(ten)
    # Equal but for the timestamps' digits: a copy per socket would hold ten times as much.
    assert abs(ten.backlog_bytes - one.backlog_bytes) < one.backlog_bytes * 0.05
    assert 32 * 1024 < ten.backlog_bytes <= 64 * 1024
    assert all(reader.behind > 0 for reader in ten_readers)
    await one.close()
    await ten.close()


def test_the_replay_keeps_each_tool_call_with_its_type_and_place_in_the_answer():
    from services.console.replay import RequestLog

    log = RequestLog(4, record_bytes=10)
    log.record({"type": "request", "id": "r1", "t": 1.0, "messages": []})
    log.record({"type": "tokens", "id": "r1", "t": 1.1, "text": "Let me "})
    log.record({"type": "iss_tool", "id": "r1", "t": 1.2, "name": "iss_passes", "arguments": "{}", "result": "{}",
                "ok": True, "ms": 1.5, "round": 1})
    log.record({"type": "tokens", "id": "r1", "t": 1.3, "text": "check: the answer"})
    log.record({"type": "iss_tool", "id": "r1", "t": 1.4, "name": "iss_crew", "arguments": "{}", "result": "{}",
                "ok": True, "ms": 0.5, "round": 2})
    (record,) = log.snapshot()
    assert record["text"] == "Let me che… [14 more bytes not kept]" and record["text_truncated"]
    assert [(call["type"], call["name"], call["text_at"]) for call in record["tools"]] == [
        ("iss_tool", "iss_passes", 7), ("iss_tool", "iss_crew", 10)]


def test_the_replay_keeps_at_most_twenty_tool_calls_per_request():
    from services.console.replay import RequestLog

    log = RequestLog(4)
    log.record({"type": "request", "id": "r1", "t": 1.0, "messages": []})
    for i in range(25):
        log.record({"type": "iss_tool", "id": "r1", "t": 1.0 + i, "name": f"iss_call_{i}", "arguments": "{}",
                    "result": "{}", "ok": True, "ms": 1.0, "round": 1})
    (record,) = log.snapshot()
    assert [call["name"] for call in record["tools"]] == [f"iss_call_{i}" for i in range(20)]  # the first 20
