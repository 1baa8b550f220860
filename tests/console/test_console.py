"""The console's page and WebSocket: token, cookie, origin, headers, replay and the live protocol."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from html import unescape
from typing import Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from services.console import EVENT_TYPES
from tests.conftest import UPSTREAM_KEY, open_stream, post_json

TOKEN = "test-console-token"
MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


# ---- helpers shared by the console tests ------------------------------------------------------


async def fetch(base_url: str, path: str, **kwargs: Any) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(
        base_url + path, raise_error=False, follow_redirects=False, request_timeout=10, **kwargs
    )


async def console_cookie(base_url: str) -> str:
    """The session cookie, obtained the way a browser does: /console?token=..."""
    response = await fetch(base_url, f"/console?token={TOKEN}")
    assert response.code == 303, response.code
    header = response.headers["Set-Cookie"]
    return header.split(";", 1)[0]


async def connect(
    base_url: str, cookie: str | None, origin: str | None = None
) -> WebSocketClientConnection:
    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    if origin:
        headers["Origin"] = origin
    request = HTTPRequest(base_url.replace("http://", "ws://") + "/console/ws", headers=headers, request_timeout=5)
    return await websocket_connect(request)


async def read_frame(ws: WebSocketClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.read_message(), timeout)
    assert message is not None, "console socket closed"
    return orjson.loads(message)


class Feed:
    """What one console socket received: frames, and the events inside them."""

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.raw: list[str] = []

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for f in self.frames if f["type"] == "events" for e in f["events"]]

    def request_id(self, conversation_id: str) -> str | None:
        """The id of the request that came with this conversation id, once seen."""
        for event in self.events:
            if event["type"] == "request" and event.get("conversation_id") == conversation_id:
                return event["id"]
        return None

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("id") == request_id]

    async def until(self, predicate: Callable[[Feed], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            assert left > 0, f"condition not met; frames: {[f['type'] for f in self.frames]}"
            message = await asyncio.wait_for(self.ws.read_message(), left)
            assert message is not None, "console socket closed"
            self.raw.append(message)
            self.frames.append(orjson.loads(message))


async def open_feed(base_url: str) -> Feed:
    ws = await connect(base_url, await console_cookie(base_url))
    feed = Feed(ws)
    await feed.until(lambda f: bool(f.frames))
    assert feed.frames[0]["type"] == "hello"
    return feed


async def until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# ---- the page ---------------------------------------------------------------------------------


async def test_page_without_a_token_is_locked_and_shows_nothing(base_url, app):
    response = await fetch(base_url, "/console")
    assert response.code == 401
    assert "Set-Cookie" not in response.headers
    assert b"console/ws" not in response.body


async def test_a_wrong_token_is_refused_without_a_cookie(base_url, app):
    response = await fetch(base_url, "/console?token=not-the-token")
    assert response.code == 403
    assert "Set-Cookie" not in response.headers
    # A bad session cookie does not open the page either.
    response = await fetch(base_url, "/console", headers={"Cookie": "iss_llm_console=forged"})
    assert response.code == 401


async def test_the_token_becomes_a_strict_httponly_cookie_and_leaves_the_url(base_url, app):
    response = await fetch(base_url, f"/console?token={TOKEN}")
    assert response.code == 303
    assert response.headers["Location"] == "/console"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert TOKEN not in cookie  # the cookie holds a value derived from the token

    page = await fetch(base_url, "/console", headers={"Cookie": cookie.split(";", 1)[0]})
    assert page.code == 200
    html = page.body.decode()
    assert TOKEN not in html
    assert "/console/ws" in html


async def test_the_cookie_is_secure_behind_a_tls_proxy_even_when_its_headers_are_not_believed(base_url, app):
    # No TRUST_PROXY_HEADERS: the request's protocol stays http, yet the browser is on https.
    plain = await fetch(base_url, f"/console?token={TOKEN}")
    assert "Secure" not in plain.headers["Set-Cookie"]
    proxied = await fetch(base_url, f"/console?token={TOKEN}", headers={"X-Forwarded-Proto": "https"})
    assert proxied.code == 303 and "Secure" in proxied.headers["Set-Cookie"]


async def test_the_page_has_a_strict_csp_and_no_inline_script(base_url, app):
    page = await fetch(base_url, "/console", headers={"Cookie": await console_cookie(base_url)})
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    html = page.body.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts, "the page loads its scripts"
    assert all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html), "no inline event handlers"
    assert "http://" not in html.replace("http://HOST", "") and "https://" not in html  # no CDN


async def test_the_page_reads_the_servers_one_table_of_event_types(base_url, app):
    page = await fetch(base_url, "/console", headers={"Cookie": await console_cookie(base_url)})
    [attribute] = re.findall(r'data-event-types="([^"]*)"', page.body.decode())
    assert orjson.loads(unescape(attribute)) == dict(EVENT_TYPES)


@pytest.mark.parametrize("overrides", [{"console_enabled": False}])
async def test_console_disabled_is_a_404(base_url, app):
    for path in (f"/console?token={TOKEN}", "/console/ws"):
        response = await fetch(base_url, path)
        assert response.code == 404
        assert orjson.loads(response.body)["error"]["code"] == "unknown_url"


# ---- the socket: who may connect ----------------------------------------------------------------


async def test_socket_without_the_cookie_is_refused(http_server, base_url, app):
    with pytest.raises(HTTPClientError) as refused:
        await connect(base_url, None)
    assert refused.value.code == 403
    with pytest.raises(HTTPClientError) as refused:
        await connect(base_url, "iss_llm_console=" + "0" * 64)
    assert refused.value.code == 403
    assert app.services.hub.subscribers == 0


async def test_a_token_in_a_refused_address_never_reaches_the_log(http_server, base_url, app, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "guessed-console-token-1234"
    for path in (f"/console/ws?token={secret}", f"/console?token={secret}"):
        url = base_url.replace("http://", "ws://") if path.startswith("/console/ws") else base_url
        with pytest.raises(HTTPClientError):
            if "ws" in path:
                await websocket_connect(HTTPRequest(url + path, request_timeout=5))
            else:
                await AsyncHTTPClient().fetch(url + path, request_timeout=5)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/console" in logged
    assert secret not in logged


async def test_socket_from_a_foreign_origin_is_refused(http_server, base_url, app):
    cookie = await console_cookie(base_url)
    for origin in ("http://evil.example", "http://127.0.0.1:1", "null"):
        with pytest.raises(HTTPClientError) as refused:
            await connect(base_url, cookie, origin=origin)
        assert refused.value.code == 403, origin
    assert app.services.hub.subscribers == 0
    # The page's own origin is welcome.
    ws = await connect(base_url, cookie, origin=base_url)
    assert (await read_frame(ws))["type"] == "hello"
    ws.close()


# ---- the socket: what it says -----------------------------------------------------------------


async def test_streamed_request_reaches_the_console_with_iss_block_tokens_and_timings(http_server, base_url, app):
    feed = await open_feed(base_url)
    response = await post_json(
        base_url,
        {"model": "nova", "messages": MESSAGES, "stream": True, "temperature": 0.3},
        headers={"conversation-id": "conv-live", "Authorization": "Bearer caller-secret-key"},
    )
    assert response.code == 200
    request_id = response.headers["X-Request-Id"]
    await feed.until(lambda f: any(e["type"] == "done" for e in f.of(request_id)))

    events = feed.of(request_id)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "request" and kinds[1] == "iss" and kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"tokens"}
    request = events[0]
    assert request["conversation_id"] == "conv-live"
    assert request["remote_ip"] == "127.0.0.1"
    assert request["model"] == "nova"
    assert request["messages"] == MESSAGES  # as the caller sent them, before the ISS block
    assert request["params"] == {"temperature": 0.3}
    assert request["upstream"]["backend"]
    assert events[1]["block"].startswith("[ISS live data]")
    assert events[1]["state"]["latitude"] is not None
    streamed = "".join(e["text"] for e in events if e["type"] == "tokens")
    answer = "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in (orjson.loads(line[6:]) for line in response.body.decode().splitlines()
                      if line.startswith("data: {"))
        if chunk.get("choices")
    )
    assert streamed == answer and streamed
    done = events[-1]
    assert done["finish_reason"] == "stop"
    assert done["ttft_ms"] is not None and done["total_ms"] >= done["ttft_ms"]
    assert done["chunks"] >= 1
    everything = "".join(feed.raw)
    assert "caller-secret-key" not in everything and UPSTREAM_KEY not in everything
    feed.ws.close()


async def test_cancelled_request_says_when(http_server, base_url, app, upstream):
    feed = await open_feed(base_url)
    _reader, writer, seen = await open_stream(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 500, "gap": 0.02}},
        headers={"conversation-id": "conv-cancel"}, events=3,
    )
    request_id = re.search(rb"X-Request-Id: (\S+)", seen).group(1).decode()
    writer.close()

    await feed.until(lambda f: any(e["type"] == "cancelled" for e in f.of(request_id)))
    events = feed.of(request_id)
    cancelled = events[-1]
    assert cancelled["type"] == "cancelled"
    assert cancelled["at_ms"] > 0 and cancelled["chunks"] >= 2
    assert not any(e["type"] in ("done", "error") for e in events)
    assert "".join(e["text"] for e in events if e["type"] == "tokens")
    feed.ws.close()


async def test_failed_request_says_what_and_where(http_server, base_url, app):
    feed = await open_feed(base_url)
    response = await post_json(
        base_url, {"messages": MESSAGES, "stream": True, "x_fake": {"fault": "status", "status": 503}},
        headers={"conversation-id": "conv-fail"},
    )
    assert response.code >= 500
    await feed.until(lambda f: f.request_id("conv-fail") is not None)
    request_id = feed.request_id("conv-fail")
    await feed.until(lambda f: any(e["type"] == "error" for e in f.of(request_id)))
    error = feed.of(request_id)[-1]
    assert error["status"] >= 500
    assert "before the first token" in error["where"]
    assert error["message"]
    assert error["at_ms"] >= 0
    feed.ws.close()


async def test_replay_on_connect_aggregates_the_buffered_requests(http_server, base_url, app):
    ids = []
    for text in ("first", "second"):
        response = await post_json(
            base_url, {"messages": [{"role": "user", "content": text}], "stream": True},
            headers={"conversation-id": "conv-replay"},
        )
        ids.append(response.headers["X-Request-Id"])
    await post_json(base_url, {"messages": MESSAGES, "x_fake": {"fault": "status", "status": 500}})
    await until(lambda: app.services.inflight.count == 0, 5)

    ws = await connect(base_url, await console_cookie(base_url))
    hello = await read_frame(ws)
    assert hello["type"] == "hello"
    assert hello["buffer"] == app.services.settings.console_buffer
    replayed = {r["id"]: r for r in hello["requests"]}
    assert list(replayed)[:2] == ids and len(replayed) == 3  # oldest first
    first = replayed[ids[0]]
    assert first["status"] == "done"
    assert first["conversation_id"] == "conv-replay"
    assert first["messages"] == [{"role": "user", "content": "first"}]
    assert first["iss"]["block"].startswith("[ISS live data]")
    assert first["text"] and first["outcome"]["finish_reason"] == "stop"
    failed = hello["requests"][2]
    assert failed["status"] == "error" and failed["outcome"]["status"] >= 500
    ws.close()


async def test_odd_requests_are_kept_bounded_and_never_lock_the_console_out(http_server, base_url, app):
    # 1,000 levels: orjson reads up to 1,024, but neither it nor json can encode that back.
    deep = b'{"messages": [{"role": "user", "content": "hi", "x": ' + b"[" * 1000 + b"0" + b"]" * 1000 + b"}]}"
    huge = orjson.dumps({"messages": [{"role": "user", "content": "x" * 900_000}], "stream": True})
    # Too deep to forward upstream (a 400), but it reached the console's buffer first.
    assert (await post_json(base_url, None, raw=deep)).code == 400
    assert (await post_json(base_url, None, raw=huge)).code == 200
    await until(lambda: app.services.inflight.count == 0, 5)

    ws = await connect(base_url, await console_cookie(base_url))
    hello = await read_frame(ws)
    assert hello["type"] == "hello"  # the deep request did not make the replay unencodable
    deep_record, huge_record = hello["requests"][-2:]
    assert "[nested too deep]" in orjson.dumps(deep_record["messages"]).decode()
    kept = huge_record["messages"][0]["content"]
    assert kept.startswith("xxx") and "more characters not kept" in kept and len(kept) < 20_000
    assert len(orjson.dumps(hello)) < 500_000
    ws.close()


@pytest.mark.parametrize("overrides", [{"console_buffer": 3}])
async def test_replay_is_bounded_by_the_buffer_and_includes_text_streamed_so_far(http_server, base_url, app):
    for i in range(5):
        await post_json(base_url, {"messages": [{"role": "user", "content": f"q{i}"}], "stream": True})
    # One request still streaming when the page connects: its text so far is in the replay.
    hub = app.services.hub
    hub.publish({"type": "request", "id": "req_live", "t": time.time(), "conversation_id": "c",
                 "messages": MESSAGES, "params": {}, "upstream": {}, "model": "m", "stream": True})
    hub.publish({"type": "tokens", "id": "req_live", "t": time.time(), "text": "half an ans"})

    ws = await connect(base_url, await console_cookie(base_url))
    hello = await read_frame(ws)
    assert len(hello["requests"]) == 3
    assert [r["messages"][0]["content"] for r in hello["requests"][:2]] == ["q3", "q4"]
    live = hello["requests"][2]
    assert live["status"] == "streaming" and live["text"] == "half an ans"
    # ...and what streams next arrives live, without repeating the replayed part.
    hub.publish({"type": "tokens", "id": "req_live", "t": time.time(), "text": "swer"})
    feed = Feed(ws)
    await feed.until(lambda f: bool(f.of("req_live")))
    assert [(e["type"], e["text"]) for e in feed.of("req_live")] == [("tokens", "swer")]
    ws.close()


async def test_the_station_position_is_pushed_to_the_page(http_server, base_url, app):
    feed = await open_feed(base_url)
    await feed.until(lambda f: any(e["type"] == "iss_state" for e in f.events))
    state = next(e for e in feed.events if e["type"] == "iss_state")["state"]
    assert -90 <= state["latitude"] <= 90 and -180 <= state["longitude"] <= 180
    assert state["at"]
    feed.ws.close()


async def test_the_station_position_is_fetched_once_for_all_sockets(http_server, base_url, app):
    tracker = app.services.tracker
    calls = []
    current = tracker.current

    async def counted():
        calls.append(time.monotonic())
        return await current()

    tracker.current = counted
    feeds = [await open_feed(base_url) for _ in range(3)]
    for feed in feeds:
        await feed.until(lambda f: any(e["type"] == "iss_state" for e in f.events))
    # One loop for the process, not one per socket: three sockets, one question to the tracker
    # (a second one only if the 5 s interval went by meanwhile).
    assert 1 <= len(calls) <= 1 + (calls[-1] - calls[0]) // 5
    for feed in feeds:
        feed.ws.close()


async def test_token_events_are_batched_into_few_frames(http_server, base_url, app):
    feed = await open_feed(base_url)
    hub = app.services.hub
    hub.publish({"type": "request", "id": "req_b", "t": time.time(), "messages": MESSAGES, "params": {}})
    for i in range(500):
        hub.publish({"type": "tokens", "id": "req_b", "t": time.time(), "text": f"{i} "})
    hub.publish({"type": "done", "id": "req_b", "t": time.time(), "finish_reason": "stop"})
    await feed.until(lambda f: any(e["type"] == "done" for e in f.of("req_b")))
    tokens = [e for e in feed.of("req_b") if e["type"] == "tokens"]
    assert len(feed.frames) <= 3  # hello + one batch (+ at most one more)
    assert "".join(e["text"] for e in tokens) == "".join(f"{i} " for i in range(500))
    feed.ws.close()


async def test_a_socket_that_falls_behind_is_told_and_resynced(http_server, base_url, app):
    feed = await open_feed(base_url)
    hub = app.services.hub
    limit = hub.policy.max_frames
    # Batches cut faster than any socket can be written to (all in one tick): the backlog
    # moves past this socket's cursor.
    for i in range(limit + 50):
        hub.publish({"type": "request", "id": f"req_{i}", "t": time.time(), "messages": MESSAGES, "params": {}})
        hub.flush()
    await feed.until(lambda f: any(fr["type"] == "snapshot" for fr in f.frames))
    snapshot = next(fr for fr in feed.frames if fr["type"] == "snapshot")
    assert snapshot["reason"] == "overflow"
    assert snapshot["dropped"] >= 50
    assert len(snapshot["requests"]) == hub.buffer_size
    assert snapshot["requests"][-1]["id"] == f"req_{limit + 49}"
    feed.ws.close()


async def test_sockets_are_closed_when_the_hub_closes(http_server, base_url, app):
    feed = await open_feed(base_url)
    await app.services.hub.close()
    message = await asyncio.wait_for(feed.ws.read_message(), 5)
    assert message is None


async def test_the_socket_cap_admits_exactly_max_sockets(http_server, base_url, app):
    from handlers.console import MAX_SOCKETS

    cookie = await console_cookie(base_url)
    sockets = []
    for _ in range(MAX_SOCKETS):
        ws = await connect(base_url, cookie)
        assert (await read_frame(ws))["type"] == "hello"
        sockets.append(ws)
    assert app.services.hub.subscribers == MAX_SOCKETS
    with pytest.raises(HTTPClientError) as refused:
        await connect(base_url, cookie)
    assert refused.value.code == 503
    # One leaves: its place is free again.
    sockets.pop().close()
    assert await until(lambda: app.services.hub.subscribers == MAX_SOCKETS - 1, 5)
    ws = await connect(base_url, cookie)
    assert (await read_frame(ws))["type"] == "hello"
    sockets.append(ws)
    for ws in sockets:
        ws.close()


async def test_a_credential_inside_a_list_in_the_request_never_reaches_the_console(http_server, base_url, app):
    # Platforms add their own fields to the body (Vapi's call and customer, Tavus's extra_body); a
    # credential may sit in a list in them, at any depth: under a credential's name, or as the
    # password of a URL.
    secrets = ("list-secret-value-one", "list-secret-value-two", "url-password-in-a-list")
    feed = await open_feed(base_url)
    response = await post_json(base_url, {
        "messages": MESSAGES, "stream": True,
        "metadata": {"integrations": [{"name": "crm", "api_key": secrets[0]},
                                      [{"headers": {"Authorization": f"Bearer {secrets[1]}"}}]],
                     "webhooks": ["https://hooks.example/a", [f"https://bot:{secrets[2]}@hooks.example/b"]]},
    })
    assert response.code == 200
    request_id = response.headers["X-Request-Id"]
    await feed.until(lambda f: any(e["type"] == "done" for e in f.of(request_id)))
    [request] = [e for e in feed.of(request_id) if e["type"] == "request"]
    metadata = request["params"]["metadata"]
    assert metadata["integrations"][0] == {"name": "crm", "api_key": "[redacted]"}  # kept, the credential replaced
    assert metadata["integrations"][1] == [{"headers": {"Authorization": "[redacted]"}}]
    assert metadata["webhooks"] == ["https://hooks.example/a", ["https://hooks.example/b"]]
    later = await open_feed(base_url)  # the replay a page opened later gets
    for seen in ("".join(feed.raw), "".join(later.raw)):
        assert request_id in seen
        for secret in secrets:
            assert secret not in seen
    feed.ws.close()
    later.ws.close()
