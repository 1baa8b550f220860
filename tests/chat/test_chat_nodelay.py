"""Streamed answers leave at once: TCP_NODELAY on the open stream, no delayed-ACK stall per token.

Without TCP_NODELAY, a second small write on a socket waits until the first is acknowledged
(Nagle's algorithm), and a caller on a reused keep-alive connection delays its acknowledgements
by up to ~40 ms (Linux's minimum delayed-ACK timer). With an upstream that sends a role chunk and
then tokens 10 ms apart, the first content token then reaches the caller ~30-40 ms after the
upstream sent it, and the tokens after it in 40 ms lumps.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

import orjson

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]

# What separates "sent at once" from "held for the caller's delayed ACK": a token relayed through
# this server on loopback arrives within about a millisecond of the upstream sending it; a write
# held by Nagle waits for the caller's acknowledgement of the one before, i.e. for the rest of the
# ~40 ms delayed-ACK timer. 20 ms is half the stall, and far above what a busy shared machine adds.
STALL_BOUND = 0.020
TOKENS = 8
GAP = 0.010


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict) -> list[tuple[float, bytes]]:
    """One streamed request on an open keep-alive connection: each content event and when it arrived."""
    payload = orjson.dumps(body)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    await writer.drain()
    buffer = b""
    arrived: list[tuple[float, bytes]] = []  # (time the read that completed the event returned, event)
    seen = 0
    while not buffer.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of a chunked response
        data = await asyncio.wait_for(reader.read(65536), 10)
        now = time.monotonic()
        assert data, f"connection closed after {buffer!r}"
        buffer += data
        events = buffer.split(b"data: ")[1:]
        complete = [e for e in events if b"\n\n" in e]
        for event in complete[seen:]:
            arrived.append((now, event.split(b"\n\n")[0]))
        seen = len(complete)
    return [(at, event) for at, event in arrived if b'"content":"' in event and b'"content":""' not in event]


def _content_sent(sent: list[tuple[float, bytes]]) -> list[float]:
    return [at for at, event in sent if b'"content":"' in event and b'"content":""' not in event]


async def test_open_stream_socket_has_nodelay_set(base_url, upstream, app):
    from handlers.chat import ChatHandler

    seen: list[int] = []
    original = ChatHandler.flush

    def spy(self, *args, **kwargs):
        stream = self.request.connection.stream
        if not self._finished and stream is not None and not stream.closed():
            seen.append(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return original(self, *args, **kwargs)

    ChatHandler.flush = spy
    try:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            events = await _request(reader, writer, {"messages": MESSAGES, "stream": True,
                                                     "x_fake": {"tokens": 3, "gap": 0.005}})
        finally:
            writer.close()
    finally:
        ChatHandler.flush = original
    assert len(events) == 3
    # Every flush of the open stream (the first one, with the headers, included) went out with
    # TCP_NODELAY on: no write of the stream waits for an acknowledgement.
    assert seen and all(seen), seen


async def test_paced_tokens_reach_a_reused_connection_as_sent(base_url, upstream):
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": TOKENS, "gap": GAP}}
    try:
        # The first turns put the connection in the state an agent's is in: reused, the caller's
        # kernel delaying its ACKs (interactive mode), which is where the stall showed.
        for _ in range(2):
            await _request(reader, writer, body)
        delays: list[float] = []
        first: list[float] = []
        for _ in range(3):
            arrived = await _request(reader, writer, body)
            sent = _content_sent(upstream.timeline[-1])
            assert len(arrived) == len(sent) == TOKENS
            lags = [got - put for (got, _), put in zip(arrived, sent, strict=True)]
            first.append(lags[0])
            delays.extend(lags)
    finally:
        writer.close()
    # The best of three turns for the first content token (one slow turn on a loaded machine is
    # noise; a stall is there on every turn), and the median lag of every token.
    assert min(first) < STALL_BOUND, f"first content token {[round(x * 1000, 1) for x in first]} ms late"
    assert statistics.median(delays) < STALL_BOUND / 2, (
        f"tokens arrive late: {sorted(round(x * 1000, 1) for x in delays)} ms"
    )


async def test_console_socket_has_nodelay_set(http_server, base_url, app):
    from handlers.console import ConsoleSocketHandler
    from tests.console.test_console import connect, console_cookie, read_frame

    seen: list[int] = []
    original = ConsoleSocketHandler.open

    def spy(self):
        result = original(self)
        seen.append(self.ws_connection.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return result

    ConsoleSocketHandler.open = spy
    try:
        ws = await connect(base_url, await console_cookie(base_url))
        try:
            await read_frame(ws)  # the hello: the socket is open and serving
        finally:
            ws.close()
    finally:
        ConsoleSocketHandler.open = original
    # The page's batches leave at once, not after its delayed ACK of the batch before.
    assert seen == [1]
