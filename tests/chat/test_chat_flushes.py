"""What leaves in which flush: each flush of a streamed answer is one HTTP/1.1 chunk on the wire, so
a caller reading the raw response sees exactly how the server grouped its events."""

from __future__ import annotations

import asyncio

import orjson

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


async def _http_chunks(base_url: str, body: dict) -> list[bytes]:
    """The response's HTTP chunks (one per flush), in order, read over a raw socket."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = orjson.dumps(body)
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
        chunks = []
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), 10)
            if size == 0:
                return chunks
            chunks.append(data[:-2])
    finally:
        writer.close()


def _contents(flush: bytes) -> list[str]:
    """The content deltas of the events in one flush."""
    out = []
    for line in flush.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = orjson.loads(line[6:])
            out += [c["delta"].get("content") for c in chunk["choices"] if c["delta"].get("content")]
    return out


async def test_the_first_content_token_leaves_in_its_own_flush_before_the_rest_of_its_burst(base_url, upstream):
    # The role chunk, a pause, then nine tokens and the stop chunk in one write: they reach the
    # server in one read, and only the first token is what the caller waits on.
    flushes = await _http_chunks(base_url, {
        "messages": MESSAGES, "stream": True,
        "x_fake": {"tokens": 9, "pause_after_role": 0.2, "burst": True},
    })
    with_content = [_contents(flush) for flush in flushes if _contents(flush)]
    assert with_content[0] == ["The"], flushes
    # The rest of the burst is coalesced (per-chunk flushes cost a third of the CPU under load).
    assert len(with_content) < 9, flushes
    assert [token for tokens in with_content for token in tokens][:3] == ["The", " station", " is"]
