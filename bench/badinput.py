"""The soak's hostile callers: a corpus of bad requests, slow drips, and hypothesis-generated bodies.

Every answer must be a 4xx with the OpenAI error object, a 200 (the input happened to be valid),
or a closed connection; never a 5xx, and never a wait past the timeout (a stuck worker).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

PATH = "/v1/chat/completions"
VALID = {"messages": [{"role": "user", "content": "Where is the ISS?"}], "stream": False}
OK_KINDS = frozenset({"4xx_json", "4xx_page", "200", "closed"})


def request_bytes(
    body: bytes, *, path: str = PATH, method: str = "POST", headers: dict[str, str] | None = None,
    content_length: int | None = None, raw_headers: bytes = b"",
) -> bytes:
    """A raw HTTP/1.1 request (Connection: close), with whatever body and headers it is given."""
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close", "Content-Type: application/json"]
    head.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\r\n".join(head).encode("latin-1") + b"\r\n" + raw_headers + b"\r\n" + body


@dataclass(frozen=True)
class Case:
    """One hostile request: the bytes, sent at once or in pieces with a pause between them."""

    name: str
    data: bytes
    piece: int = 0  # >0: send in pieces of this many bytes ...
    pause: float = 0.0  # ... this many seconds apart
    stop_after: int | None = None  # hang up after this many bytes (no answer expected)
    page: bool = False  # not the API: any 4xx body will do (static files, the console page)


def _nested(depth: int) -> bytes:
    head = b'{"messages": [{"role": "user", "content": "hi"}], "metadata": '
    return head + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


def _hang_up(case: Case) -> Case:
    """The same bytes, after which the caller hangs up instead of waiting for an answer."""
    return Case(case.name, case.data, case.piece, case.pause, stop_after=len(case.data), page=case.page)


def corpus() -> list[Case]:
    """Hand-written bad requests: invalid JSON, wrong types, huge, deep, bad UTF-8, bad HTTP."""
    valid = orjson.dumps(VALID)
    cases = [
        Case("empty body", request_bytes(b"")),
        Case("whitespace body", request_bytes(b"  \n ")),
        Case("truncated JSON", request_bytes(b'{"messages": [')),
        Case("not JSON", request_bytes(b"{not json}")),
        Case("trailing garbage", request_bytes(valid + b" xx")),
        Case("NUL bytes", request_bytes(b"\x00" * 64)),
        Case("BOM then JSON", request_bytes(b"\xef\xbb\xbf" + valid)),
        Case("JSON array", request_bytes(b"[1, 2, 3]")),
        Case("messages a string", request_bytes(b'{"messages": "hello"}')),
        Case("messages null", request_bytes(b'{"messages": null}')),
        Case("messages of numbers", request_bytes(b'{"messages": [1, 2]}')),
        Case("role a number", request_bytes(b'{"messages": [{"role": 7, "content": "x"}]}')),
        Case("content an object", request_bytes(b'{"messages": [{"role": "user", "content": {"a": 1}}]}')),
        Case("model a list", request_bytes(b'{"messages": [{"role": "user", "content": "x"}], "model": [1]}')),
        Case("stream a string", request_bytes(b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}')),
        Case("stream_options a list", request_bytes(
            b'{"messages": [{"role": "user", "content": "x"}], "stream_options": [1]}')),
        Case("invalid UTF-8 in a string", request_bytes(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}')),
        Case("lone surrogate escape", request_bytes(b'{"messages": [{"role": "user", "content": "\\ud800"}]}')),
        Case("UTF-16 body", request_bytes(json.dumps(VALID).encode("utf-16"))),
        Case("deep array nesting", request_bytes(b"[" * 200_000 + b"]" * 200_000)),
        Case("deep object nesting past the parser limit", request_bytes(_nested(5000))),
        Case("deep but parseable nesting in an extra field", request_bytes(_nested(1000))),
        Case("huge but allowed string", request_bytes(orjson.dumps(
            {"messages": [{"role": "user", "content": "x" * 900_000}], "stream": False}))),
        Case("string over the body limit", request_bytes(orjson.dumps(
            {"messages": [{"role": "user", "content": "x" * 2_000_000}]}))),
        Case("body over the limit, sent", request_bytes(b" " * 5_000_000 + valid)),
        Case("absurd Content-Length, no body", request_bytes(b"", content_length=100 * 1024 * 1024)),
        Case("negative Content-Length", request_bytes(valid, content_length=-5)),
        _hang_up(Case("Content-Length longer than the body, then hang up",
                      request_bytes(valid, content_length=len(valid) + 50))),
        Case("oversized header", request_bytes(valid, headers={"X-Big": "a" * 100_000})),
        Case("thousands of headers", request_bytes(valid, raw_headers=b"".join(
            b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(3000)))),
        Case("invalid UTF-8 header value", request_bytes(valid, raw_headers=b"conversation-id: \xff\xfe\xfd\r\n")),
        Case("long conversation-id", request_bytes(valid, headers={"conversation-id": "c" * 20_000})),
        Case("garbage Authorization", request_bytes(valid, headers={"Authorization": "Bearer \x7f\x01 junk"})),
        Case("text/plain content type", request_bytes(valid).replace(b"application/json", b"text/plain")),
        Case("very long path", request_bytes(valid, path="/v1/chat/completions" + "a" * 70_000)),
        Case("unknown method", request_bytes(valid, method="BREW")),
        Case("GET the chat path", request_bytes(b"", method="GET")),
        Case("request line garbage", b"GARBAGE\r\n\r\n"),
        Case("HTTP/0.9 style", b"GET /\r\n\r\n"),
        Case("bare LF line ends", request_bytes(valid).replace(b"\r\n", b"\n")),
        Case("chunked with a bad size", b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
             b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
        # Issue 9: what a browser on another site, a rebinding name or a hostile caller would send.
        Case("foreign Origin", request_bytes(valid, headers={"Origin": "https://evil.example"})),
        Case("null Origin", request_bytes(valid, headers={"Origin": "null"})),
        Case("form content type", request_bytes(valid).replace(b"application/json",
                                                               b"application/x-www-form-urlencoded")),
        Case("rebound Host", request_bytes(valid).replace(b"Host: localhost", b"Host: attacker.example")),
        Case("model of 100 000 characters", request_bytes(orjson.dumps({**VALID, "model": "m" * 100_000}))),
        Case("a dict key of 900 000 characters",
             request_bytes(orjson.dumps({**VALID, "metadata": {"k" * 900_000: 1}}))),
        Case("200 000 tiny values", request_bytes(orjson.dumps({**VALID, "metadata": {"a": [0] * 200_000}}))),
        Case("NUL in a static path", request_bytes(b"", method="GET", path="/static/console.js%00.css"), page=True),
        Case("static path outside, with a token", request_bytes(
            b"", method="GET", path="/static/../server.py?token=soak-secret"), page=True),
        *[Case(f"console token guess #{i}", request_bytes(b"", method="GET", path="/console?token=guess-0123456789"),
               page=True) for i in range(8)],
        Case("both Content-Length and chunked", b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
             b"Connection: close\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
    ]
    return cases


def drips(count: int, pause: float) -> list[Case]:
    """Slow callers: bodies and headers a byte at a time, some abandoned half way."""
    valid = orjson.dumps(VALID)
    out = []
    for i in range(count):
        out.append(Case(f"slow body, valid #{i}", request_bytes(valid), piece=1, pause=pause))
        out.append(Case(f"slow body, invalid #{i}", request_bytes(b'{"messages": 5' + b" " * 40 + b"}"),
                        piece=1, pause=pause))
        head = request_bytes(valid)
        out.append(Case(f"slow headers then hang up #{i}", head, piece=1, pause=pause, stop_after=len(head) // 2))
        out.append(Case(f"half a body then hang up #{i}", request_bytes(valid), piece=4, pause=pause,
                        stop_after=len(head) - len(valid) // 2))
    return out


def judge(status: int | None, body: bytes, closed: bool, page: bool = False) -> str:
    """The kind of answer: 4xx_json, 4xx_page (a page's error), 200, closed (acceptable) or
    4xx_not_json, 5xx (not)."""
    if status is None:
        return "closed"
    if status == 200:
        return "200"
    if page and 400 <= status < 500 and b"Traceback" not in body:
        return "4xx_page"
    if 400 <= status < 500:
        try:
            error = orjson.loads(body)["error"]
            if isinstance(error["message"], str) and {"type", "param", "code"} <= set(error):
                return "4xx_json"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            pass
        # Tornado answers garbage it cannot parse as HTTP with a bare 400 and closes the line.
        return "closed" if closed and not body else "4xx_not_json"
    return f"{status // 100}xx"


def _split(raw: bytes) -> tuple[int | None, bytes]:
    """Status and body of a raw HTTP/1.1 response (Content-Length or chunked)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, b""
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, body


async def send_raw(port: int, case: Case, timeout: float) -> str:
    """Send one case over a fresh connection and judge the answer; 'stuck' past `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                data = case.data if case.stop_after is None else case.data[: case.stop_after]
                step = case.piece or len(data) or 1
                for start in range(0, len(data), step):
                    writer.write(data[start:start + step])
                    await writer.drain()
                    if case.pause:
                        await asyncio.sleep(case.pause)
                if case.stop_after is not None:
                    return "hung_up"
                raw = b""
                while len(raw) < 64 * 1024 * 1024:
                    block = await reader.read(65536)
                    if not block:
                        break
                    raw += block
                status, body = _split(raw)
                return judge(status, body, closed=True, page=case.page)
            finally:
                writer.close()
    except TimeoutError:
        return "stuck"
    except (ConnectionError, OSError):
        return "closed"


async def idle_flood(port: int, count: int, hold: float, probe: Probe) -> None:
    """`count` idle connections held for `hold` seconds (more than the server's MAX_CONNECTIONS in
    the soak): /healthz must still answer meanwhile, on a new connection, within 5 s."""
    if count <= 0:
        return
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(count):
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5.0)
            except (OSError, TimeoutError):
                continue
            writers.append(writer)
        kind = await send_raw(port, Case("healthz during an idle flood", request_bytes(b"", method="GET",
                                                                                        path="/healthz")), 5.0)
        probe.record("200" if kind == "200" else "stuck", f"/healthz during {count} idle connections: {kind}")
        await asyncio.sleep(hold)
    finally:
        for writer in writers:
            writer.close()


# --- hypothesis ------------------------------------------------------------------------------

_SKIP_KEYS = {"x_fake", "tools", "tool_choice", "functions"}  # would drive the fake upstream itself


def _strategies() -> Any:
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
    json_any = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
    role = st.sampled_from(["system", "user", "assistant", "tool", "developer", "function", "wizard", ""]) | json_any
    part = st.fixed_dictionaries({}, optional={"type": st.sampled_from(["text", "image_url"]) | json_any,
                                               "text": st.text(max_size=40) | json_any})
    content = st.text(max_size=200) | st.lists(part, max_size=3) | json_any
    message = st.fixed_dictionaries({}, optional={"role": role, "content": content, "tool_calls": json_any,
                                                  "name": json_any}) | json_any
    known = st.fixed_dictionaries({}, optional={
        "messages": st.lists(message, max_size=4) | json_any,
        "model": st.text(max_size=30) | json_any,
        "stream": st.booleans() | json_any,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_any}) | json_any,
        "temperature": json_any,
    })
    extra = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in _SKIP_KEYS), json_any, max_size=3)
    objects = st.builds(lambda a, b: {**b, **a}, known, extra)

    def encode(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj)
        except TypeError:  # integers past 64 bits
            return json.dumps(obj).encode()

    body = (objects.map(encode) | st.binary(max_size=3000)
            | st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")))
    header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
    return st.fixed_dictionaries({
        "body": body,
        "method": st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "PATCH"]),
        "path": st.sampled_from([PATH, "/chat/completions"]),
        "conversation": header_text,
        "content_type": st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]),
    })


@dataclass
class Probe:
    """Counts of answer kinds and the cases that got an unacceptable one."""

    kinds: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def record(self, kind: str, what: str) -> None:
        self.kinds[kind] += 1
        if kind not in OK_KINDS and kind != "hung_up":
            self.failures.append(f"{kind}: {what}")


def _send_blocking(port: int, case: dict[str, Any], timeout: float) -> str:
    headers = {"Connection": "close", "conversation-id": case["conversation"]}
    if case["content_type"]:
        headers["Content-Type"] = case["content_type"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(case["method"], case["path"], body=case["body"], headers=headers)
        response = connection.getresponse()
        return judge(response.status, response.read(), closed=True)
    except TimeoutError:
        return "stuck"
    except (ConnectionError, http.client.HTTPException, OSError):
        return "closed"
    finally:
        connection.close()


def warm_hypothesis() -> None:
    """Build hypothesis's one-off Unicode table now: on a fresh checkout that takes about 3 s of
    CPU holding the GIL, which, mid-storm, starves the fakes in this process past the timeouts."""
    import warnings

    from hypothesis import strategies as st

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st.text().example()


def run_hypothesis(port: int, examples: int, seed: int, timeout: float, stop: threading.Event, probe: Probe,
                   on_done: Callable[[], None] | None = None) -> None:
    """`examples` generated requests, one at a time (blocking; run it in a thread)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fix_seed

    @fix_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=_strategies())
    def probe_one(case: dict[str, Any]) -> None:
        if stop.is_set():
            return
        kind = _send_blocking(port, case, timeout)
        probe.record(kind, f"hypothesis {case['method']} {case['path']} body[:80]={case['body'][:80]!r}")
        if on_done is not None:
            on_done()

    probe_one()


async def run_corpus(port: int, cases: list[Case], timeout: float, probe: Probe, concurrency: int = 8,
                     on_done: Callable[[], None] | None = None) -> None:
    """Send the cases, a few at a time, and record each answer."""
    queue = list(reversed(cases))

    async def worker() -> None:
        while queue:
            case = queue.pop()
            started = time.monotonic()
            kind = await send_raw(port, case, timeout)
            probe.record(kind, f"{case.name} ({time.monotonic() - started:.1f}s)")
            if on_done is not None:
                on_done()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
