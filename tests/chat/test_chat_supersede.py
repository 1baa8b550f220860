"""SUPERSEDE=conversation: a newer request of a conversation ends the older one still in flight."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.conftest import FIXTURES, open_stream, post_json, sse_events

BURST = [orjson.loads(line) for line in (FIXTURES / "tavus" / "speculative_burst.jsonl").read_text().splitlines()
         if line]
ON = [{"supersede": "conversation"}]


async def _read_to_end(reader: asyncio.StreamReader, seen: bytes) -> bytes:
    """The rest of a chunked streamed response, until its last chunk."""
    while not seen.endswith(b"\r\n0\r\n\r\n"):
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, f"connection closed before the end: {seen[-300:]!r}"
        seen += data
    return seen


def _data(raw: bytes) -> list[bytes]:
    """The data payloads of a raw chunked HTTP response (chunk-size lines dropped)."""
    body = raw.split(b"\r\n\r\n", 1)[1]
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


async def _until(predicate, timeout: float = 1.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def _records(app) -> dict[str, str]:
    return {record["id"]: record["status"] for record in app.services.hub.snapshot()}


@pytest.mark.parametrize("overrides", ON)
async def test_a_speculative_burst_leaves_one_upstream_stream_and_clean_ends(overrides, base_url, upstream, app):
    upstream.tokens, upstream.gap = 300, 0.02
    older = []
    for body in BURST[:-1]:
        reader, writer, seen = await open_stream(base_url, body, path="/chat/completions",
                                                 headers={"conversation-id": "burst"}, events=2)
        older.append((reader, writer, seen))
        # The newer request's stream is the only one open: the older one was closed at once.
        assert await _until(lambda: upstream.open_streams == 1 and upstream.aborted_streams == len(older) - 1)
    upstream.tokens, upstream.gap = 5, 0.0
    last = await post_json(base_url, BURST[-1], path="/chat/completions", headers={"conversation-id": "burst"})
    assert sse_events(last.body)[-1] == "[DONE]"
    assert await upstream.wait_streams_closed(1.0)
    assert upstream.aborted_streams == 2 and upstream.completed_streams == 1

    for reader, writer, seen in older:
        data = _data(await _read_to_end(reader, seen))
        writer.close()
        # A clean end of the completion the caller was reading: its own id, finish_reason "stop", [DONE].
        assert data[-1] == b"[DONE]"
        chunks = [orjson.loads(item) for item in data[:-1]]
        assert not any("error" in chunk for chunk in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}

    health = orjson.loads((await post_json(base_url, None, path="/healthz", method="GET")).body)["chat"]
    assert health["superseded"] == 2 and health["done"] == 1 and health["cancelled"] == 0
    # The console marks them: each record's status is its outcome.
    assert sorted(_records(app).values()) == ["done", "superseded", "superseded"]


@pytest.mark.parametrize("overrides", ON)
async def test_superseded_before_the_first_token(overrides, base_url, upstream):
    reader, writer, seen = await open_stream(
        base_url, {**BURST[0], "x_fake": {"fault": "stall"}}, path="/chat/completions",
        headers={"conversation-id": "c1"}, events=0)
    assert await _until(lambda: upstream.open_streams == 1, 5.0)
    last = await post_json(base_url, BURST[1], path="/chat/completions", headers={"conversation-id": "c1"})
    assert sse_events(last.body)[-1] == "[DONE]"
    raw = await _read_to_end(reader, seen)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200")
    data = _data(raw)
    # A whole, empty completion: role, finish_reason "stop", [DONE].
    assert data[-1] == b"[DONE]"
    assert orjson.loads(data[-2])["choices"][0]["finish_reason"] == "stop"
    assert await upstream.wait_streams_closed(1.0)


@pytest.mark.parametrize("overrides", ON)
async def test_a_whole_answer_superseded_is_an_empty_completion(overrides, base_url, upstream):
    first = asyncio.ensure_future(post_json(
        base_url, {"messages": BURST[0]["messages"], "x_fake": {"first_token_delay": 30}},
        headers={"conversation-id": "c2"}))
    assert await _until(lambda: upstream.requests == 1, 5.0)
    await post_json(base_url, {"messages": BURST[1]["messages"]}, headers={"conversation-id": "c2"})
    response = await asyncio.wait_for(first, 5)
    assert response.code == 200
    completion = orjson.loads(response.body)
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize("overrides", ON)
async def test_other_conversations_and_requests_without_an_id_are_left_alone(overrides, base_url, upstream):
    upstream.tokens, upstream.gap = 300, 0.02
    writers = []
    for headers in ({"conversation-id": "a"}, {"conversation-id": "b"}, {}, {}):
        _reader, writer, _ = await open_stream(base_url, BURST[0], path="/chat/completions", headers=headers,
                                               events=2)
        writers.append(writer)
    assert upstream.open_streams == 4 and upstream.aborted_streams == 0
    for writer in writers:
        writer.close()
    assert await upstream.wait_streams_closed(2.0)


async def test_off_by_default_both_requests_run(base_url, upstream, app):
    assert app.services.settings.supersede == "off"
    upstream.tokens, upstream.gap = 300, 0.02
    writers = []
    for body in BURST[:2]:
        _reader, writer, _ = await open_stream(base_url, body, path="/chat/completions",
                                               headers={"conversation-id": "same"}, events=2)
        writers.append(writer)
    assert upstream.open_streams == 2 and upstream.aborted_streams == 0
    for writer in writers:
        writer.close()
    assert await upstream.wait_streams_closed(2.0)


ALICE, MALLORY = "sk-alice-key-0123456789", "sk-mallory-key-0123456789"
TWO_CALLERS = [{"supersede": "conversation", "server_api_keys": (("alice", ALICE), ("mallory", MALLORY))}]


@pytest.mark.parametrize("overrides", TWO_CALLERS)
async def test_another_callers_request_with_the_same_conversation_id_ends_nothing(overrides, base_url, upstream,
                                                                                 app):
    # Issue 19, finding 4: any key holder ended another caller's answer by sending its conversation-id,
    # and the victim saw a normal "stop". The conversation is the caller's: one key, one namespace.
    upstream.tokens, upstream.gap = 300, 0.02
    victim, writer, seen = await open_stream(base_url, BURST[0], path="/chat/completions", events=2,
                                             headers={"conversation-id": "conv-7", "Authorization": f"Bearer {ALICE}"})
    _r, other, _ = await open_stream(base_url, BURST[1], path="/chat/completions", events=2,
                                     headers={"conversation-id": "conv-7", "Authorization": f"Bearer {MALLORY}"})
    assert upstream.open_streams == 2 and upstream.aborted_streams == 0
    seen += await asyncio.wait_for(victim.read(65536), 5)  # the victim's answer goes on
    assert b'"finish_reason":"stop"' not in seen
    # The same caller's newer request does supersede it.
    _r, newer, _ = await open_stream(base_url, BURST[1], path="/chat/completions", events=2,
                                     headers={"conversation-id": "conv-7", "Authorization": f"Bearer {ALICE}"})
    assert await _until(lambda: upstream.aborted_streams == 1)
    assert b"[DONE]" in _data(await _read_to_end(victim, seen))[-1]
    for w in (writer, other, newer):
        w.close()
    assert await upstream.wait_streams_closed(2.0)
    # The console knows each request by its caller's name; no key is anywhere in it.
    records = app.services.hub.snapshot()
    assert sorted(record.get("key_name") for record in records) == ["alice", "alice", "mallory"]
    assert ALICE not in orjson.dumps(records).decode() and MALLORY not in orjson.dumps(records).decode()


@pytest.mark.parametrize("overrides", ON)
async def test_ids_that_only_sanitize_alike_are_two_conversations(overrides, base_url, upstream, app):
    upstream.tokens, upstream.gap = 300, 0.02
    _r, first, _ = await open_stream(base_url, BURST[0], path="/chat/completions", events=2,
                                     headers={"conversation-id": "conv victim 3!"})
    _r, second, _ = await open_stream(base_url, BURST[1], path="/chat/completions", events=2,
                                      headers={"conversation-id": "convvictim3"})
    assert upstream.open_streams == 2 and upstream.aborted_streams == 0
    # Both show the same sanitized id in the console and logs, and neither ended the other.
    assert {record["conversation_id"] for record in app.services.hub.snapshot()} == {"convvictim3"}
    for w in (first, second):
        w.close()
    assert await upstream.wait_streams_closed(2.0)
