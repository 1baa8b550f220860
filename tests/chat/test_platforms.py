"""Agent platforms' recorded requests (tests/data/fixtures/<platform>/) against an upstream as strict as
OpenAI: each streams through, with its platform's conversation id in the console, the log and SUPERSEDE."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from services.common.openai_format import OPENAI_CHAT_PARAMS
from tests.conftest import FIXTURES, UPSTREAM_KEY, error_of, open_stream, post_json, sse_events
from tests.fakes.openai_upstream import OPENAI_FIELDS, FakeUpstream

VAPI_FIELDS = {"call", "phoneNumber", "customer", "metadata"}
DESTRUCTURED_METADATA = {"campaign", "tier", "retries"}


@pytest.fixture
def strict() -> bool:
    return True


@pytest.fixture
def upstream(io_loop, strict) -> FakeUpstream:
    """The fake upstream, refusing unknown top-level fields with a 400 as OpenAI does (unless `strict` is
    parametrized False: an upstream with vendor extensions)."""
    fake = FakeUpstream(tokens=5, api_key=UPSTREAM_KEY, strict=strict)
    io_loop.run_sync(fake.start)
    yield fake
    io_loop.run_sync(fake.close)


def recorded(platform: str, name: str) -> tuple[dict, dict[str, str]]:
    """A recorded request's body and headers (the placeholder Authorization left out: no key is set here)."""
    body = orjson.loads((FIXTURES / platform / f"{name}.json").read_bytes())
    headers: dict[str, str] = {}
    header_file = FIXTURES / platform / f"{name}.headers"
    if header_file.exists():
        for line in header_file.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() and key.strip().lower() != "authorization":
                headers[key.strip()] = value.strip()
    return body, headers


def content_of(body: bytes) -> str:
    text = ""
    for data in sse_events(body):
        if data == "[DONE]":
            continue
        chunk = orjson.loads(data)
        assert "error" not in chunk, chunk
        for choice in chunk.get("choices") or ():
            text += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls") or ():  # a caller's tool, called
                text += (call.get("function") or {}).get("name") or ""
    return text


def record_of(app, request_id: str) -> dict:
    app.services.hub.flush()
    return next(record for record in app.services.hub.snapshot() if record["request_id"] == request_id)


REPLAYS = [
    # (platform folder, fixture, platform recognised, conversation id expected)
    ("tavus", "request_turn", "tavus", "c7e1f0a2b3"),
    ("tavus", "request_extra_body", "tavus", "c9d8e7f6a5"),
    ("vapi", "request_variable", "vapi", "4d1c2a77-6f0e-4f6b-9a3e-2b8f5c1d0e9a"),
    ("vapi", "request_destructured", "vapi", "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1f0e"),
    ("openai", "request", "openai", None),
]


@pytest.mark.parametrize(("folder", "name", "platform", "conversation_id"), REPLAYS,
                         ids=[f"{folder}-{name}" for folder, name, *_ in REPLAYS])
async def test_each_platforms_recorded_request_streams_through_a_strict_upstream(
    app, base_url, upstream, caplog, folder, name, platform, conversation_id
):
    body, headers = recorded(folder, name)
    caplog.set_level(logging.INFO, logger="iss_llm")
    response = await post_json(base_url, body, path="/chat/completions", headers=headers)
    assert response.code == 200, response.body[:500]
    assert sse_events(response.body)[-1] == "[DONE]"
    assert content_of(response.body), "an answer streamed"

    sent = upstream.bodies[-1]
    assert set(sent) <= OPENAI_FIELDS, "only fields OpenAI knows went upstream"
    assert not set(sent) & (VAPI_FIELDS | DESTRUCTURED_METADATA)
    assert sent["messages"][: len(body["messages"]) - 1] == body["messages"][:-1], "the history reached it unchanged"
    for kept in ("temperature", "top_p", "max_tokens", "max_completion_tokens", "user", "tool_choice"):
        if kept in body:
            assert sent[kept] == body[kept], kept  # Tavus's extra_body and OpenAI's parameters stay

    request_id = response.headers["X-Request-Id"]
    record = record_of(app, request_id)
    expected = conversation_id or headers.get("conversation-id")
    assert record["conversation_id"] == expected
    assert record["platform"] == ("tavus" if folder == "openai" else platform)  # a header alone reads as Tavus
    assert not set(record["params"]) & (VAPI_FIELDS | DESTRUCTURED_METADATA), "no phone numbers in the console"
    done = [r.getMessage() for r in caplog.records if request_id in r.getMessage() and " done " in r.getMessage()]
    assert done and f"conversation={expected}" in done[0]


async def test_the_vapi_fields_left_out_are_named_in_the_console(app, base_url, upstream):
    body, _ = recorded("vapi", "request_destructured")
    response = await post_json(base_url, body)
    assert response.code == 200
    record = record_of(app, response.headers["X-Request-Id"])
    assert set(record["left_out"]) == {"call", "phoneNumber", "customer"} | DESTRUCTURED_METADATA


BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Where is the ISS?"}],
        "top_k": 40, "x_vendor": {"a": 1}}


async def test_passthrough_forwards_unknown_fields_which_openai_refuses(base_url, upstream):
    response = await post_json(base_url, BODY)
    assert response.code == 400
    assert "Unrecognized request argument supplied: top_k, x_vendor" in error_of(response)["message"]


@pytest.mark.parametrize("overrides", [{"upstream_params": "openai"}])
async def test_upstream_params_openai_sends_only_openai_parameters(app, base_url, upstream):
    response = await post_json(base_url, BODY)
    assert response.code == 200, response.body[:300]
    assert content_of(response.body)
    assert "top_k" not in upstream.bodies[-1] and "x_vendor" not in upstream.bodies[-1]
    assert record_of(app, response.headers["X-Request-Id"])["left_out"] == ["top_k", "x_vendor"]


@pytest.mark.parametrize(("overrides", "strict"),
                         [({"upstream_params": "openai", "upstream_extra_params": ("top_k", "metadata")}, False)])
async def test_upstream_extra_params_are_sent_whatever_the_profile(app, base_url, upstream):
    lenient = upstream
    assert (await post_json(base_url, BODY)).code == 200
    assert lenient.bodies[-1]["top_k"] == 40 and "x_vendor" not in lenient.bodies[-1]
    vapi, _ = recorded("vapi", "request_variable")
    assert (await post_json(base_url, vapi)).code == 200
    assert lenient.bodies[-1]["metadata"] == vapi["metadata"]
    assert "call" not in lenient.bodies[-1] and "customer" not in lenient.bodies[-1]


@pytest.mark.parametrize("overrides", [{"platform": "openai"}])
async def test_platform_setting_forces_a_profile(app, base_url, upstream):
    vapi, _ = recorded("vapi", "request_variable")
    response = await post_json(base_url, vapi, headers={"conversation-id": "from-header"})
    # Read as a plain OpenAI request: Vapi's fields go upstream (passthrough) and OpenAI refuses them.
    assert response.code == 400 and "call" in error_of(response)["message"]
    record = app.services.hub.snapshot()
    assert not record or all(r.get("conversation_id") != vapi["call"]["id"] for r in record)


async def _until(predicate, timeout: float = 2.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("overrides", [{"supersede": "conversation"}])
async def test_a_newer_vapi_request_of_the_same_call_supersedes_the_older(app, base_url, upstream):
    vapi, _ = recorded("vapi", "request_variable")
    upstream.tokens, upstream.gap = 300, 0.02
    _reader, writer, _seen = await open_stream(base_url, vapi, events=2)
    assert await _until(lambda: upstream.open_streams == 1)
    upstream.tokens, upstream.gap = 3, 0.0
    newer = await post_json(base_url, vapi)
    assert sse_events(newer.body)[-1] == "[DONE]"
    assert await upstream.wait_streams_closed(2.0)
    assert upstream.aborted_streams == 1, "the older request's upstream stream was closed"
    writer.close()
    app.services.hub.flush()
    statuses = [record["status"] for record in app.services.hub.snapshot()
                if record.get("conversation_id") == vapi["call"]["id"]]
    assert statuses == ["superseded", "done"]


def test_the_allow_list_is_the_openai_packages():
    from openai.types.chat import completion_create_params

    assert OPENAI_CHAT_PARAMS == set(completion_create_params.CompletionCreateParamsBase.__annotations__) | {
        "stream"}
