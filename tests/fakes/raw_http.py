"""HTTP at the socket, for what a well-behaved server library will not do: close a kept-alive
connection as a request arrives, answer half an answer, never answer, never accept; and a tiny
forward proxy that counts what goes through it. All on loopback, started and stopped by a test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

CHUNK = {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}
EVENT = b"data: " + orjson.dumps(CHUNK) + b"\n\n"
ANSWER = EVENT + b"data: [DONE]\n\n"

# What the server does with a request, decided per request by a test's policy:
ANSWER_IT = "answer"  # a whole SSE answer with a Content-Length; the connection stays open
CLOSE = "close"  # close the connection without a byte
HALF = "half"  # the head and one event of a longer answer, then close
STATUS_503 = "503"  # a 503 with an OpenAI error body; the connection stays open
LATE_END = "late_end"  # a chunked answer whose last chunk (the end of the body) comes 0.3 s after [DONE]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's head and body, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head + body


@dataclass
class ScriptedUpstream:
    """Answers each request as `policy(connection number, request number on it, request number overall)` says."""

    policy: Callable[[int, int, int], str]
    requests: int = 0
    connections: int = 0
    received: list[bytes] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def start(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, on_it = self.connections, 0
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests += 1
                on_it += 1
                self.received.append(request)
                action = self.policy(connection, on_it, self.requests)
                if action == CLOSE:
                    return
                if action == HALF:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % (len(ANSWER) + 1000) + EVENT)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    return
                if action == LATE_END:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(ANSWER) + ANSWER + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.3)
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    continue
                if action == STATUS_503:
                    body = orjson.dumps({"error": {"message": "busy", "type": "server_error", "param": None,
                                                   "code": None}})
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
                await writer.drain()
        finally:
            writer.close()


@dataclass
class SilentUpstream:
    """Accepts and reads a request, then never answers (until closed)."""

    requests: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def start(self) -> SilentUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if await _read_request(reader) is not None:
            self.requests += 1
        await reader.read()  # until the client goes away

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


class UnacceptingListener:
    """A listening socket whose accept queue is full, so a new connection's handshake never completes."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(0)
        self._held: list[socket.socket] = []
        for _ in range(3):  # fill the queue (a backlog of 0 still holds one)
            client = socket.socket()
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(self._socket.getsockname())
            self._held.append(client)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"

    def close(self) -> None:
        for client in self._held:
            client.close()
        self._socket.close()


@dataclass
class CountingProxy:
    """A plain HTTP forward proxy (absolute-form requests to http:// targets), counting the requests it relays."""

    targets: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.split(b" ")
        self.targets.append(target.decode())
        parts = urlsplit(target.decode())
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
        origin_form = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        up_writer.write(b" ".join((method, origin_form.encode(), version)) + b"\r\n" + rest)
        pipes = [asyncio.ensure_future(_pipe(reader, up_writer)), asyncio.ensure_future(_pipe(up_reader, writer))]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for pipe in pipes:
            pipe.cancel()
        writer.close()
        up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
