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
    {"x_fake": {"fault": "status", "status": 404, "code": "model_not_found"}}   ... with this error code
    {"x_fake": {"fault": "status", "status": 404, "body": {...}}}   ... with exactly this JSON body
    {"x_fake": {"fault": "status", "status": 404, "text": "..."}}   ... with this plain text body
    {"x_fake": {"pause_after_role": 2}}                 the role chunk at once, then a pause
    {"x_fake": {"pause_after_role": 2, "pause_comments": 0.1}}   ... an SSE comment every 0.1 s of it
    {"x_fake": {"pause_after_role": 2, "pause_partial": true}}   ... half the next chunk's line before it
    {"x_fake": {"multiline": true}}                     each chunk's JSON over several data: lines
    {"x_fake": {"tokens": 5, "gap": 0.01, "first_token_delay": 0.1}}
    {"x_fake": {"words": ["<b>", "hi"]}}                a stream's content tokens (default: WORDS)
    {"x_fake": {"pause_at": 9, "pause": 0.5}}           a pause before chunk 9 (a model that thinks)
    {"x_fake": {"burst": true}}                          every chunk after the role chunk in one write:
                                                         they reach the layer in one read
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

Tools: the layer's own (named iss_*) are never called unless `scripted_tools` is set (or the request's
`x_fake.scripted` is true, for that request only); a caller's
tool (any other name) is called as before. With `scripted_tools`, a question "... from <Place>?"
(or any text in `x_fake.place`) offered iss_passes is answered in two rounds, like a real model,
streamed or not (see `scripted_round`): first a call to iss_passes (and to the caller's first tool,
when there is one, in the same turn); then, with the tool's result in the conversation, the rise
times it gave as content (and the caller's tool called again). The request picks how:

    {"x_fake": {"order": "caller_first"}}     the calls' order and chunking: layer_first (default),
                                              caller_first, interleaved, whole, whole_no_index, caller_only
    {"x_fake": {"pieces": 7}}                 each call's arguments in 7 deltas (default 2)
    {"x_fake": {"layer_calls": 1000}}         round 1 calls iss_passes 1,000 times (a model asked about
                                              "these 100 cities"); with "grid": true each call at a
                                              distinct place (latitude/longitude on a 4° x 9° grid)
    {"x_fake": {"again": false}}              round 2 does not call the caller's tool again
    {"x_fake": {"usage": "litellm"}}          the usage chunk's choices: "empty" ([], default),
                                              "absent" (no key), "litellm" ([{"index": 0, "delta": {}}])

With `refuse_tools`, a request offering iss_* tools is refused with a 400, as some servers do; with
`refuse_tools_for` (a set of model names), only requests for those models are.

With `strict`, a request carrying a top-level field OpenAI does not know (the openai package's
`CompletionCreateParams` and `stream`; `x_fake` included) is refused with OpenAI's own 400,
"Unrecognized request argument supplied: <name>", as api.openai.com does.

It counts requests and open streams, and keeps the last bodies (parsed, and as the bytes received),
request lines ("POST /v1/chat/completions") and headers it received, so a
test can see what reached the upstream and that an abandoned stream was closed. `timeline` keeps,
for each of the last streams, when each SSE event was handed to the socket (`time.monotonic()`)
and its bytes, so a test in the same process can tell how late the caller got each token.

Run alone: python -m tests.fakes.openai_upstream --port 9100 --tokens 20 --gap 0.005
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import re
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


def _openai_fields() -> frozenset[str]:
    """The top-level fields OpenAI's chat completions accept, from the openai package (not the project's list)."""
    from openai.types.chat import completion_create_params

    return frozenset(completion_create_params.CompletionCreateParamsBase.__annotations__) | {"stream"}


OPENAI_FIELDS = _openai_fields()

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
    refuse_tools_for: set = field(default_factory=set)  # models that refuse tools (Ollama's 400)
    refuse_tool_results: bool = False  # a later tool round (a request carrying tool results) gets a 400
    strict: bool = False  # unknown top-level fields get OpenAI's 400 (see the module docstring)

    requests: int = 0
    largest_tool_round: int = 0  # bytes of the largest scripted request carrying tool results
    model_lists: int = 0  # GET /v1/models answered
    open_streams: int = 0
    completed_streams: int = 0
    aborted_streams: int = 0
    bodies: deque = field(default_factory=lambda: deque(maxlen=50))
    raw_bodies: deque = field(default_factory=lambda: deque(maxlen=50))
    request_lines: deque = field(default_factory=lambda: deque(maxlen=50))
    peers: deque = field(default_factory=lambda: deque(maxlen=50))  # the client's (address, port) per request
    # What GET /v1/models lists.
    models_listed: tuple[str, ...] = ("fake-model",)
    models_delay: float = 0.0  # seconds before GET /v1/models answers
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
        app.router.add_route("*", "/{path:.*}", self.elsewhere)
        return app

    async def elsewhere(self, request: web.Request) -> web.Response:
        """Any other path: recorded, then the plain-text 404 a web server gives for a path it does not serve."""
        self.request_lines.append(f"{request.method} {request.path_qs}")
        return web.Response(status=404, text="404: Not Found")

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
        self.request_lines.append(f"{request.method} {request.path_qs}")
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided: sk-te***key.", "invalid_request_error")
        if self.models_delay:
            await asyncio.sleep(self.models_delay)
        return web.json_response({"object": "list",
                                  "data": [{"id": model, "object": "model"} for model in self.models_listed]})

    def _error(self, status: int, message: str, type_: str = "server_error", code: str | None = None
               ) -> web.Response:
        body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return web.json_response(body, status=status)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.request_lines.append(f"{request.method} {request.path_qs}")
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        self.headers.append(dict(request.headers))
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided: sk-te***key.", "invalid_request_error")
        raw = await request.read()
        self.raw_bodies.append(raw)
        body = orjson.loads(raw)
        self.bodies.append(body)
        if self.strict:
            unknown = [name for name in body if name not in OPENAI_FIELDS]
            if unknown:
                return self._error(400, f"Unrecognized request argument supplied: {', '.join(unknown)}",
                                   "invalid_request_error")
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
            if "body" in fake:
                return web.json_response(fake["body"], status=status)
            if "text" in fake:
                return web.Response(text=fake["text"], status=status, content_type="text/plain")
            return self._error(status, message, kind, fake.get("code"))
        if fault == "odd_completion":
            return web.json_response({"choices": [{"message": "hello"}]})
        tokens = int(fake.get("tokens", len(fake["words"]) if fake.get("words") else self.tokens))
        gap = float(fake.get("gap", self.gap))
        first_delay = float(fake.get("first_token_delay", self.first_token_delay))
        model = body.get("model", "fake-model")
        created = int(time.time())
        cid = f"chatcmpl-fake{self.requests}"
        tools = body.get("tools")
        offered = [tool for tool in tools if _tool_name(tool) is not None] if isinstance(tools, list) else []
        layer = [tool for tool in offered if str(_tool_name(tool)).startswith("iss_")]
        if layer and (self.refuse_tools or model in self.refuse_tools_for):
            return self._error(400, "This model does not support tools.", "invalid_request_error")
        if self.refuse_tool_results and any(
            isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages") or ()
        ):
            return self._error(400, "This model's context length is exceeded.", "invalid_request_error")
        caller_tools = [tool for tool in offered if tool not in layer]
        wants_tools = bool(caller_tools) and body.get("tool_choice") != "none"
        if (self.scripted_tools or fake.get("scripted")) and layer:
            if any(isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages") or ()):
                self.largest_tool_round = max(self.largest_tool_round, len(raw))
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
            burst: list[bytes] = []
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
                if index and fake.get("burst"):
                    burst.append(payload)
                    continue
                await response.write(payload)
                sent.append((time.monotonic(), payload))
            if burst:
                await response.write(b"".join(burst))
                sent.append((time.monotonic(), b"".join(burst)))
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
            name = next(name for name in map(_tool_name, body["tools"]) if name and not name.startswith("iss_"))
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
        """The rounds of a model that uses the layer's pass tool (see the module's docstring)."""
        created, model = int(time.time()), body.get("model", "fake-model")
        fake = body.get("x_fake") or {}
        deltas, finish, usage = scripted_round(body, caller_tools)
        if not body.get("stream"):
            return web.json_response(scripted_completion(cid, created, model, deltas, finish, usage))

        def event(delta: dict, finish: str | None = None) -> bytes:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        events = [event({"role": "assistant", "content": ""}), *(event(delta) for delta in deltas),
                  event({}, finish)]
        if (body.get("stream_options") or {}).get("include_usage"):
            shape = fake.get("usage", "empty")
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "usage": usage}
            if shape == "empty":
                chunk["choices"] = []
            elif shape == "litellm":  # LiteLLM's proxy: one choice with an empty delta
                chunk["choices"] = [{"index": 0, "delta": {}}]
            events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")  # "absent": no choices at all
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


def cid_of(number: int) -> str:
    return f"chatcmpl-fake{number}"


def _tool_name(tool: Any) -> str | None:
    """The name of a function tool, or None for anything else (a caller may send odd tools)."""
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _pieces(text: str, count: int) -> list[str]:
    """`text` cut into `count` pieces (as models stream arguments: anywhere, even mid-escape)."""
    count = max(1, min(count, len(text) or 1))
    step = -(-len(text) // count)
    return [text[start:start + step] for start in range(0, len(text), step)] or [""]


def _call_deltas(index: int | None, call_id: str, name: str, arguments: str, pieces: int) -> list[dict]:
    """One call's deltas: the id and name with the first piece of arguments, then the rest."""
    first, *rest = _pieces(arguments, pieces)
    head = {"id": call_id, "type": "function", "function": {"name": name, "arguments": first}}
    deltas = [{**({"index": index} if index is not None else {}), **head}]
    deltas += [{**({"index": index} if index is not None else {}), "function": {"arguments": piece}} for piece in rest]
    return deltas


def _grid_place(index: int) -> str:
    """iss_passes arguments at the `index`-th place of a 25 x 40 grid (4° by 9°): 1,000 distinct places."""
    latitude, longitude = -50 + (index // 40 % 25) * 4, -175 + (index % 40) * 9
    return orjson.dumps({"latitude": latitude, "longitude": longitude}).decode()


def scripted_round(body: dict, caller_tools: list) -> tuple[list[dict], str, dict]:
    """One round of the scripted model: its deltas after the role, its finish reason, its usage.

    Round 1 (no tool result yet) calls iss_passes for the place asked about and, when the caller
    offered a tool, that tool too, in the order `x_fake.order` names:
      layer_first (default), caller_first, interleaved (parallel calls, deltas alternating),
      whole (Ollama: every call whole in one delta), whole_no_index (the same, without indexes),
      caller_only (only the caller's tool: no layer call in the round).
    Arguments come in `x_fake.pieces` pieces (default 2); `x_fake.layer_calls` iss_passes calls
    (default 1). Round 2 (with the tool's result) says the
    rise times it gave and, unless `x_fake.again` is false, calls the caller's tool again.
    The caller's tool gets {"location": <place>, "round": <n>}. Usage: 100n+7 prompt, 10n+3 completion.
    """
    fake = body.get("x_fake") or {}
    messages = body.get("messages") or []
    pieces = int(fake.get("pieces", 2))
    order = fake.get("order", "layer_first")
    results = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
    number = 1 if not results else 2
    usage = {"prompt_tokens": 100 * number + 7, "completion_tokens": 10 * number + 3,
             "total_tokens": 110 * number + 10}
    question = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "") or ""
    match = re.search(r"from ([A-Z][\w ,]*?)[?,]", str(question))
    place = fake.get("place") or (match[1] if match else "Paris")  # any text, as a model could be steered to write
    caller = caller_tools[0]["function"]["name"] if caller_tools else None
    theirs = orjson.dumps({"location": place, "round": number}).decode()
    if number == 1:
        ours = orjson.dumps({"place": place}).decode()
        if order == "caller_only" and caller:
            return [{"tool_calls": [d]} for d in _call_deltas(0, "call_caller", caller, theirs, pieces)], \
                "tool_calls", usage
        count = int(fake.get("layer_calls", 1))  # a model asked about "these 100 cities"
        layer = [("call_passes" if i == 0 else f"call_passes_{i}", "iss_passes",
                  _grid_place(i) if fake.get("grid") else ours) for i in range(count)]
        calls = [*layer, ("call_caller", caller, theirs)] if caller else layer
        if order in {"caller_first", "interleaved"} and caller:
            calls = [calls[-1], *calls[:-1]]
        if order in {"whole", "whole_no_index"}:
            whole = [{**({"index": i} if order == "whole" else {}), "id": call_id, "type": "function",
                      "function": {"name": name, "arguments": arguments}}
                     for i, (call_id, name, arguments) in enumerate(calls)]
            return [{"tool_calls": whole}], "tool_calls", usage
        per_call = [_call_deltas(i, call_id, name, arguments, pieces)
                    for i, (call_id, name, arguments) in enumerate(calls)]
        if order == "interleaved":
            deltas = [d for step in itertools.zip_longest(*per_call) for d in step if d is not None]
        else:
            deltas = [d for call in per_call for d in call]
        return [{"tool_calls": [d]} for d in deltas], "tool_calls", usage
    result = orjson.loads(results[-1]["content"])
    rises = [item["rise"]["utc"] for item in result.get("passes", [])] if isinstance(result, dict) else []
    text = "You can see it at: " + ", ".join(rises) + "." if rises else "No pass: " + str(result)[:200]
    deltas = [{"content": word} for word in re.findall(r"\S+\s*", text)]
    if caller and fake.get("again", True):
        deltas += [{"tool_calls": [d]} for d in _call_deltas(0, "call_caller2", caller, theirs, pieces)]
        return deltas, "tool_calls", usage
    return deltas, "stop", usage


def scripted_completion(cid: str, created: int, model: str, deltas: list[dict], finish: str, usage: dict) -> dict:
    """The same round, not streamed: the deltas folded into one message."""
    content = "".join(d.get("content") or "" for d in deltas)
    calls: list[dict] = []
    by_index: dict[int, dict] = {}
    for delta in deltas:
        for part in delta.get("tool_calls") or ():
            if "id" in part:
                calls.append({"id": part["id"], "type": "function",
                              "function": {"name": part["function"]["name"], "arguments": ""}})
                by_index[part.get("index", len(calls) - 1)] = calls[-1]
            by_index[part.get("index", len(calls) - 1)]["function"]["arguments"] += part["function"].get(
                "arguments", "")
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = calls
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


if __name__ == "__main__":
    main()
