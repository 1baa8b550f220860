"""A fake OpenAI-compatible upstream: a real HTTP server on loopback for tests and the benchmark.

Behaviour is set per server (`FakeUpstream(...)` arguments, or attributes changed by a test) and
may be overridden per request by an `x_fake` object in the request body, which this project
passes upstream unchanged like every other field:

    {"x_fake": {"fault": "status", "status": 503}}     answer 503 with an OpenAI error body
    {"x_fake": {"fault": "stall"}}                      accept, then send nothing (until closed)
    {"x_fake": {"fault": "drop", "after": 2}}           drop the connection after 2 chunks
    {"x_fake": {"fault": "malformed", "after": 2}}      send a chunk that is not JSON
    {"x_fake": {"fault": "misshapen", "after": 2}}      send JSON that is not a chunk
    {"x_fake": {"fault": "error_event", "after": 2}}    send data: {"error": ...} mid-stream
    {"x_fake": {"fault": "empty"}}                      a stream with no chunk, only [DONE]
    {"x_fake": {"fault": "odd_completion"}}             a non-streamed answer that is not a completion
    {"x_fake": {"fault": "status", "echo_key": true}}   an error message repeating the key it got
    {"x_fake": {"pause_after_role": 2}}                 the role chunk at once, then a pause
    {"x_fake": {"pause_after_role": 2, "pause_comments": 0.1}}   ... an SSE comment every 0.1 s of it
    {"x_fake": {"pause_after_role": 2, "pause_partial": true}}   ... half the next chunk's line before it
    {"x_fake": {"multiline": true}}                     each chunk's JSON over several data: lines
    {"x_fake": {"tokens": 5, "gap": 0.01, "first_token_delay": 0.1}}
    {"x_fake": {"words": ["<b>", "hi"]}}                a stream's content tokens (default: WORDS)
    {"x_fake": {"pause_at": 9, "pause": 0.5}}           a pause before chunk 9 (a model that thinks)
    {"x_fake": {"stamp": true}}                          each chunk carries "x_sent": time.monotonic()
                                                         when written (the benchmark's token pacing)

Hostile upstreams (each `bytes` is a size in bytes):

    {"x_fake": {"fault": "long_line", "bytes": N}}       a stream whose first line never ends
    {"x_fake": {"fault": "big_event", "bytes": N}}       one event of short data: lines, N bytes in all
    {"x_fake": {"fault": "flood", "bytes": N}}           valid chunks, about N bytes in all
    {"x_fake": {"fault": "huge_completion", "bytes": N}} a non-streamed answer of N bytes
    {"x_fake": {"fault": "gzip_bomb", "bytes": N}}       gzip on the wire, N bytes once inflated (stream,
                                                         whole answer, or with "status" an error body)
    {"x_fake": {"gzip": true}}                           the ordinary answer, gzip-compressed
    {"x_fake": {"fault": "comments", "seconds": S}}      only SSE comments (every 0.1 s) for S seconds
    {"x_fake": {"fault": "drip", "seconds": S}}          the first chunk a byte at a time over S seconds
    {"x_fake": {"fault": "token_flood", "bytes": N}}     N content chunks of one character each, written
                                                         hundreds at a time (a fast model's long answer)
    {"x_fake": {"extra_chunks": [{...}, ...]}}           these raw JSON chunks before [DONE]
    {"x_fake": {"completion": {...}}}                    this exact object as the non-streamed answer

Tools: the layer's own (named iss_*) are never called unless `scripted_tools` is set; a caller's
tool (any other name) is called as before. With `scripted_tools`, a question "... from <Place>?"
(or any text in `x_fake.place`) offered iss_passes is answered in two rounds, like a real model:
first a call to iss_passes (and to the caller's first tool, when there is one, in the same turn);
then, with the tool's result in the conversation, the rise times it gave as content (and the
caller's tool called again). With `refuse_tools`, a request offering iss_* tools is refused with a
400, as some servers do.

It counts requests and open streams, and keeps the last bodies and headers it received, so a
test can see what reached the upstream and that an abandoned stream was closed. `timeline` keeps,
for each of the last streams, when each SSE event was handed to the socket (`time.monotonic()`)
and its bytes, so a test in the same process can tell how late the caller got each token.

Run alone: python -m tests.fakes.openai_upstream --port 9100 --tokens 20 --gap 0.005
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

WORDS = ("The", " station", " is", " flying", " over", " the", " ocean", " right", " now", ".")


@functools.lru_cache(maxsize=8)
def gzip_bomb(size: int, line: bytes) -> bytes:
    """`line` repeated to `size` bytes, gzip-compressed a megabyte at a time (never whole in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = line * max(1, (1 << 20) // len(line))
    out, left = [], size
    while left > 0:
        out.append(compressor.compress(block[:left]))
        left -= len(block)
    out.append(compressor.flush())
    return b"".join(out)


def _gzip_response(body: bytes, status: int, content_type: str) -> web.Response:
    return web.Response(body=body, status=status, headers={"Content-Type": content_type, "Content-Encoding": "gzip"})


@dataclass
class FakeUpstream:
    tokens: int = 10
    first_token_delay: float = 0.0
    gap: float = 0.0
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    keep: int = 50
    # When set, a stream pauses before chunk number `hold_at` until `release` is set.
    hold_at: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)

    # The layer's tools: answer them like a model would (see the module docstring), or refuse them.
    scripted_tools: bool = False
    refuse_tools: bool = False
    refuse_tool_results: bool = False  # a later tool round (a request carrying tool results) gets a 400

    requests: int = 0
    model_lists: int = 0  # GET /v1/models answered
    open_streams: int = 0
    completed_streams: int = 0
    aborted_streams: int = 0
    bodies: deque = field(default_factory=lambda: deque(maxlen=50))
    headers: deque = field(default_factory=lambda: deque(maxlen=50))
    # One list per stream, oldest stream first: (time.monotonic() when written, the event's bytes).
    timeline: deque = field(default_factory=lambda: deque(maxlen=50))
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        return app

    async def start(self) -> FakeUpstream:
        # handler_cancellation: the handler is cancelled the moment the client goes away, so
        # open_streams counts what the upstream really still has open.
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=2048)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_streams_closed(self, timeout: float) -> bool:
        """True once no stream is open, polling for at most `timeout` seconds."""
        async def idle() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.open_streams == 0)

        try:
            await asyncio.wait_for(idle(), timeout)
        except TimeoutError:
            return False
        return True

    async def _set_open(self, delta: int) -> None:
        async with self._changed:
            self.open_streams += delta
            self._changed.notify_all()

    async def models(self, request: web.Request) -> web.Response:
        self.model_lists += 1
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def _error(self, status: int, message: str, type_: str = "server_error") -> web.Response:
        body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
        return web.json_response(body, status=status)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.headers.append(dict(request.headers))
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided: sk-te***key.", "invalid_request_error")
        body = await request.json(loads=orjson.loads)
        self.bodies.append(body)
        fake = body.get("x_fake") or {}
        fault = fake.get("fault")
        size = int(fake.get("bytes", 0))
        if fault == "gzip_bomb" and (not body.get("stream") or "status" in fake):
            status = int(fake.get("status", 200))
            return _gzip_response(gzip_bomb(size, b'{"pad": "' + b"0" * 1000 + b'",'), status, "application/json")
        if fault == "huge_completion":
            return web.Response(body=b'{"choices": [], "pad": "' + b"0" * size + b'"}', content_type="application/json")
        if "completion" in fake and not body.get("stream"):
            return web.json_response(fake["completion"])
        if fault == "status":
            status = int(fake.get("status", 500))
            kind = "rate_limit_error" if status == 429 else "server_error"
            message = fake.get("message", f"fake upstream failure {status}")
            if fake.get("echo_key"):  # like a careless upstream that repeats the credentials it got
                message += f" (you sent {request.headers.get('Authorization')})"
            return self._error(status, message, kind)
        if fault == "odd_completion":
            return web.json_response({"choices": [{"message": "hello"}]})
        tokens = int(fake.get("tokens", len(fake["words"]) if fake.get("words") else self.tokens))
        gap = float(fake.get("gap", self.gap))
        first_delay = float(fake.get("first_token_delay", self.first_token_delay))
        model = body.get("model", "fake-model")
        created = int(time.time())
        cid = f"chatcmpl-fake{self.requests}"
        offered = [tool for tool in body.get("tools") or () if isinstance(tool, dict)]
        layer = [tool for tool in offered if str(tool.get("function", {}).get("name", "")).startswith("iss_")]
        if self.refuse_tools and layer:
            return self._error(400, "This model does not support tools.", "invalid_request_error")
        if self.refuse_tool_results and any(
            isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages") or ()
        ):
            return self._error(400, "This model's context length is exceeded.", "invalid_request_error")
        caller_tools = [tool for tool in offered if tool not in layer]
        wants_tools = bool(caller_tools) and body.get("tool_choice") != "none"
        if self.scripted_tools and layer and body.get("stream"):
            return await self._scripted(request, body, cid_of(self.requests), caller_tools)

        if not body.get("stream"):
            if first_delay:
                await asyncio.sleep(first_delay)
            completion = self._completion(cid, created, model, tokens, wants_tools)
            if fake.get("gzip"):
                return _gzip_response(zlib.compress(orjson.dumps(completion), wbits=16 + zlib.MAX_WBITS), 200,
                                      "application/json")
            return web.json_response(completion)

        if fault == "gzip_bomb":
            return _gzip_response(gzip_bomb(size, b": the same comment again\n"), 200, "text/event-stream")
        if fake.get("gzip"):
            stream = b"".join(self._chunks(cid, created, model, tokens, wants_tools, body)) + b"data: [DONE]\n\n"
            return _gzip_response(zlib.compress(stream, wbits=16 + zlib.MAX_WBITS), 200, "text/event-stream")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        sent: list[tuple[float, bytes]] = []
        self.timeline.append(sent)
        await self._set_open(+1)
        finished = False
        try:
            try:
                await response.prepare(request)
            except ConnectionResetError:
                return response  # the caller left before the headers went out: an aborted stream
            if fault == "stall":
                await asyncio.sleep(3600)
            if first_delay:
                await asyncio.sleep(first_delay)
            if fault == "empty":
                await response.write(b"data: [DONE]\n\n")
                finished = True
                return response
            if fault in HOSTILE_STREAMS:
                await HOSTILE_STREAMS[fault](response, size, float(fake.get("seconds", 1.0)))
                finished = True
                return response
            after = int(fake.get("after", 1))
            pause_after_role = float(fake.get("pause_after_role", 0))
            pause_at, pause = fake.get("pause_at"), float(fake.get("pause", 0))
            for index, payload in enumerate(self._chunks(cid, created, model, tokens, wants_tools, body)):
                if index == 1 and pause_after_role:
                    await self._pause(response, pause_after_role, fake, payload)
                    if fake.get("pause_partial"):
                        payload = payload[len(payload) // 2:]
                if fake.get("multiline"):
                    # The same JSON spread over several data: lines, as SSE allows.
                    pretty = orjson.dumps(orjson.loads(payload[6:]), option=orjson.OPT_INDENT_2)
                    payload = b"".join(b"data: " + line + b"\n" for line in pretty.split(b"\n")) + b"\n"
                if index == after and fault in {"drop", "malformed", "misshapen", "error_event"}:
                    if fault == "drop":
                        request.transport.close()  # type: ignore[union-attr]
                        return response
                    if fault == "malformed":
                        await response.write(b"data: {not json\n\n")
                    elif fault == "misshapen":
                        await response.write(b'data: {"choices": [42, "x"]}\n\n')
                    else:
                        error = {"error": {"message": "fake mid-stream failure", "type": "server_error",
                                           "param": None, "code": None}}
                        await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
                        await response.write(b"data: [DONE]\n\n")
                    finished = True
                    return response
                if index == pause_at and pause:
                    await asyncio.sleep(pause)
                if index and gap:
                    await asyncio.sleep(gap)
                if index == self.hold_at:
                    await self.release.wait()
                if fake.get("stamp") and payload.endswith(b"}\n\n"):
                    payload = payload[:-3] + b',"x_sent":%.6f}\n\n' % time.monotonic()
                await response.write(payload)
                sent.append((time.monotonic(), payload))
            for extra in fake.get("extra_chunks") or ():
                await response.write(b"data: " + orjson.dumps(extra) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            finished = True
            return response
        finally:
            await self._set_open(-1)
            if finished:
                self.completed_streams += 1
            else:
                self.aborted_streams += 1

    async def _pause(self, response: web.StreamResponse, seconds: float, fake: dict, payload: bytes) -> None:
        """A model that thinks: nothing but, when asked, SSE comments or a partial line meanwhile."""
        if fake.get("pause_partial"):
            await response.write(payload[: len(payload) // 2])
        every = float(fake.get("pause_comments") or 0)
        if every <= 0:
            await asyncio.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(every, left))
            await response.write(b": thinking\n\n")

    def _chunks(self, cid: str, created: int, model: str, tokens: int, tools: bool, body: dict) -> Any:
        def event(delta: dict, finish: str | None = None) -> bytes:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        yield event({"role": "assistant", "content": ""})
        if tools:
            name = next(tool for tool in body["tools"]
                        if not str(tool["function"]["name"]).startswith("iss_"))["function"]["name"]
            yield event({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                         "function": {"name": name, "arguments": ""}}]})
            yield event({"tool_calls": [{"index": 0, "function": {"arguments": '{"where": "iss"}'}}]})
            yield event({}, "tool_calls")
        else:
            words = (body.get("x_fake") or {}).get("words") or WORDS
            for index in range(tokens):
                yield event({"content": words[index % len(words)]})
            yield event({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 42, "completion_tokens": tokens, "total_tokens": 42 + tokens}
            yield b"data: " + orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                            "model": model, "choices": [], "usage": usage}) + b"\n\n"

    async def _scripted(self, request: web.Request, body: dict, cid: str, caller_tools: list) -> web.StreamResponse:
        """Two rounds of a model that uses the layer's pass tool (see the module's docstring)."""
        created, model = int(time.time()), body.get("model", "fake-model")
        messages = body.get("messages") or []

        def event(delta: dict, finish: str | None = None) -> bytes:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def call(index: int, call_id: str, name: str, arguments: str) -> list[bytes]:
            half = len(arguments) // 2  # arguments in two deltas, as models stream them
            return [event({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                           "function": {"name": name, "arguments": arguments[:half]}}]}),
                    event({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]})]

        events = [event({"role": "assistant", "content": ""})]
        results = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
        if not results:
            question = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "") or ""
            match = re.search(r"from ([A-Z][\w ,]*?)\?", str(question))
            asked = (body.get("x_fake") or {}).get("place")  # any text, as a model could be steered to write
            place = orjson.dumps({"place": asked or (match[1] if match else "Paris")}).decode()
            events += call(0, "call_passes", "iss_passes", place)
            if caller_tools:
                events += call(1, "call_caller", caller_tools[0]["function"]["name"], '{"note": "first"}')
            events.append(event({}, "tool_calls"))
        else:
            result = orjson.loads(results[-1]["content"])
            rises = [item["rise"]["utc"] for item in result.get("passes", [])]
            text = "You can see it at: " + ", ".join(rises) + "." if rises else "No pass: " + str(result)[:200]
            events += [event({"content": word}) for word in re.findall(r"\S+\s*", text)]
            if caller_tools:
                events += call(0, "call_caller2", caller_tools[0]["function"]["name"], '{"note": "after"}')
                events.append(event({}, "tool_calls"))
            else:
                events.append(event({}, "stop"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.first_token_delay:
            await asyncio.sleep(self.first_token_delay)  # each round pays the model's time to first token
        for payload in events:
            await response.write(payload)
        await response.write(b"data: [DONE]\n\n")
        return response

    def _completion(self, cid: str, created: int, model: str, tokens: int, tools: bool) -> dict:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(WORDS[i % len(WORDS)] for i in range(tokens))}
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 42, "completion_tokens": tokens, "total_tokens": 42 + tokens}}


async def _long_line(response: web.StreamResponse, size: int, seconds: float) -> None:
    await response.write(b"data: ")
    for _ in range(0, size, 1 << 16):
        await response.write(b"0" * (1 << 16))


async def _big_event(response: web.StreamResponse, size: int, seconds: float) -> None:
    line = b"data: " + b"0" * 1000 + b"\n"
    for _ in range(0, size, len(line) * 64):
        await response.write(line * 64)
    await response.write(b"\n")


async def _flood(response: web.StreamResponse, size: int, seconds: float) -> None:
    chunk = {"id": "chatcmpl-flood", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "0" * 4000}, "finish_reason": None}]}
    event = b"data: " + orjson.dumps(chunk) + b"\n\n"
    for _ in range(0, size, len(event) * 16):
        await response.write(event * 16)
    await response.write(b"data: [DONE]\n\n")


async def _comments(response: web.StreamResponse, size: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await response.write(b": still thinking\n\n")
        await asyncio.sleep(0.1)


async def _drip(response: web.StreamResponse, size: int, seconds: float) -> None:
    chunk = {"id": "chatcmpl-drip", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Drip"}, "finish_reason": None}]}
    event = b"data: " + orjson.dumps(chunk) + b"\n\n"
    for index in range(len(event)):
        await response.write(event[index:index + 1])
        await asyncio.sleep(seconds / len(event))
    await response.write(b"data: [DONE]\n\n")


async def _token_flood(response: web.StreamResponse, size: int, seconds: float) -> None:
    def event(delta: dict, finish: str | None = None) -> bytes:
        chunk = {"id": "chatcmpl-tokens", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    await response.write(event({"role": "assistant", "content": ""}))
    one = event({"content": "x"})
    for start in range(0, size, 512):
        await response.write(one * min(512, size - start))
    await response.write(event({}, "stop") + b"data: [DONE]\n\n")


HOSTILE_STREAMS = {"long_line": _long_line, "big_event": _big_event, "flood": _flood, "comments": _comments,
                   "drip": _drip, "token_flood": _token_flood}


async def _serve(args: argparse.Namespace) -> None:
    upstream = FakeUpstream(tokens=args.tokens, first_token_delay=args.first_token_delay, gap=args.gap,
                            host=args.host, port=args.port)
    await upstream.start()
    print(f"fake upstream on {upstream.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--gap", type=float, default=0.0)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()


def cid_of(number: int) -> str:
    return f"chatcmpl-fake{number}"
