"""Request ids end to end: the caller's X-Request-Id (bounded, sanitized) or a new one, on the answer,
upstream, in the console's record."""

from __future__ import annotations

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from services.common.request_context import MAX_CONVERSATION_ID, MAX_REQUEST_ID, sanitized_conversation_id
from tests.conftest import error_of, post_json, sse_events

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
BODY = {"model": "m", "messages": MESSAGES, "stream": True}


def sent_upstream(upstream) -> str | None:
    """The X-Request-Id the upstream last received (header names are case-insensitive)."""
    return {name.lower(): value for name, value in upstream.headers[-1].items()}.get("x-request-id")


async def test_the_callers_id_is_answered_sent_upstream_and_shown_in_the_console(app, base_url, upstream):
    response = await post_json(base_url, BODY, headers={"X-Request-Id": "trace-4bf92f3577b34da6"})
    assert sse_events(response.body)[-1] == "[DONE]"
    assert response.headers["X-Request-Id"] == "trace-4bf92f3577b34da6"
    assert sent_upstream(upstream) == "trace-4bf92f3577b34da6"
    app.services.hub.flush()
    record = app.services.hub.snapshot()[-1]
    assert record["request_id"] == "trace-4bf92f3577b34da6"
    # The console keys its records by an id of its own: two callers sending one id never mix.
    assert record["id"] != record["request_id"] and record["id"].startswith("req_")


async def test_without_an_id_the_server_names_the_request_everywhere_alike(app, base_url, upstream):
    response = await post_json(base_url, BODY)
    request_id = response.headers["X-Request-Id"]
    assert request_id.startswith("req_") and len(request_id) == 28
    assert sent_upstream(upstream) == request_id
    app.services.hub.flush()
    record = app.services.hub.snapshot()[-1]
    assert record["id"] == record["request_id"] == request_id


@pytest.mark.parametrize(("given", "kept"), [
    ("abc def\"<script>é", "abcdefscript"),
    ("Root=1-5759e988-bd86;Parent=53995c3f", "Root=1-5759e988-bd86Parent=53995c3f"),
    ("x" * 5000, "x" * MAX_REQUEST_ID),
])
async def test_an_incoming_id_is_sanitized_and_bounded(base_url, upstream, given, kept):
    response = await post_json(base_url, BODY, headers={"X-Request-Id": given})
    assert response.headers["X-Request-Id"] == kept
    assert sent_upstream(upstream) == kept


async def test_an_id_of_nothing_safe_gets_a_new_one(base_url, upstream):
    response = await post_json(base_url, BODY, headers={"X-Request-Id": "\"<>\" "})
    assert response.headers["X-Request-Id"].startswith("req_")


@pytest.mark.parametrize("overrides", [{"server_api_key": "server-key-0123456789abcdef"}])
async def test_errors_and_other_routes_carry_the_id_too(base_url, overrides):
    refused = await post_json(base_url, BODY, headers={"X-Request-Id": "on-401"})
    assert refused.code == 401 and error_of(refused)["code"] == "missing_api_key"
    assert refused.headers["X-Request-Id"] == "on-401"
    unknown = await AsyncHTTPClient().fetch(base_url + "/nowhere", raise_error=False,
                                            headers={"X-Request-Id": "on-404"})
    assert unknown.code == 404 and unknown.headers["X-Request-Id"] == "on-404"
    key = {"Authorization": "Bearer server-key-0123456789abcdef"}
    bad = await post_json(base_url, None, raw=b"{not json", headers={"X-Request-Id": "on-400", **key})
    assert bad.code == 400 and bad.headers["X-Request-Id"] == "on-400"
    health = await AsyncHTTPClient().fetch(base_url + "/healthz")
    assert health.headers["X-Request-Id"].startswith("req_")
    assert orjson.loads(health.body)["status"] == "ok"


@pytest.mark.parametrize(("header", "kept"), [
    ("conv-2f1e.abc:7", "conv-2f1e.abc:7"),
    ("conv 1\r\nX-Evil: 1", "conv1X-Evil:1"),
    ("é\x00\"'<>", None),
    ("", None),
    (None, None),
    ("c" * 10_000, "c" * MAX_CONVERSATION_ID),
])
def test_a_conversation_id_keeps_only_safe_characters_and_a_bounded_length(header, kept):
    assert sanitized_conversation_id(header) == kept
