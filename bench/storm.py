"""The soak's chat traffic: a speculative-inference storm with upstream faults mixed in.

Each request is planned up front (seeded): most are abandoned by the caller at a random moment,
some carry an `x_fake` fault the fake upstream acts out. Every answer is classified: a complete
stream, a well-formed error (HTTP error with the OpenAI error object, or an SSE error event then
[DONE]), an abandonment, or lost (anything else: a hang, a truncated stream, a 500, garbage).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

# Faults the fake upstream acts out (tests/fakes/openai_upstream.py), as x_fake objects.
FAULTS: dict[str, dict[str, Any]] = {
    "status_500": {"fault": "status", "status": 500},
    "status_503": {"fault": "status", "status": 503},
    "status_429": {"fault": "status", "status": 429},
    "stall": {"fault": "stall"},
    "drop": {"fault": "drop", "after": 3},
    "malformed": {"fault": "malformed", "after": 3},
    "misshapen": {"fault": "misshapen", "after": 3},
    "error_event": {"fault": "error_event", "after": 3},
    # Hostile upstreams (issue 9): each bounded by the server, reported as an error, never a 5xx of its own.
    # Sizes a few times the soak server's bounds (256 KB an event, 1 MB an answer): past them, without
    # the fake upstream (in the soak's own process) spending its time writing what nobody reads.
    "long_line": {"fault": "long_line", "bytes": 1024 * 1024},
    "big_event": {"fault": "big_event", "bytes": 1024 * 1024},
    "flood": {"fault": "flood", "bytes": 3 * 1024 * 1024},
    "gzip_bomb": {"fault": "gzip_bomb", "bytes": 100 * 1024 * 1024},
    "comments_only": {"fault": "comments", "seconds": 20.0},  # past the soak's MAX_STREAM_SECONDS
    "drip": {"fault": "drip", "seconds": 20.0},
    "forged_log_line": {"fault": "status", "status": 500, "message": "boom\n" + "FORGED log line"},
    # Odd bookkeeping values: the answer completes, the odd chunks passed through.
    "odd_values": {"extra_chunks": [
        {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": [1, 2, 3]},
        {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"completion_tokens": "many"}},
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": "1", "function": {"name": 5}}, {"index": 0, "function": {"arguments": "{"}}, 7]},
            "finish_reason": 5}]},
    ]},
}
# A model that answers with a round of 1,000 iss_passes calls at distinct places (issue 19, finding 2):
# the layer runs ISS_TOOL_MAX_CALLS of them, answers the rest with an error result, bounds the results'
# bytes; the request ends with its answer or a clean error. Planned apart from FAULTS (see `plan`).
TOOL_FAULTS: dict[str, dict[str, Any]] = {
    "thousand_calls": {"scripted": True, "layer_calls": 1000, "grid": True},
}
# Faults after which the answer must still complete (the others must be reported as errors)...
COMPLETES = frozenset({"odd_values"})
# ...and those that may end either way, complete or with a well-formed error.
EITHER = frozenset(TOOL_FAULTS)
# A content token that is not empty, in a chunk as the server writes it (the time to first token).
_CONTENT = re.compile(rb'"content":"(?:[^"\\]|\\.)')
# A line the server's log must never start with (forged_log_line tries to).
FORGED = "FORGED log line"


@dataclass(frozen=True)
class Planned:
    """One request of the storm: its pace upstream, its fault, and when (if ever) the caller leaves."""

    index: int
    tokens: int
    gap: float
    first_token_delay: float
    fault: str | None
    abandon_at: float | None

    def body(self) -> bytes:
        fake: dict[str, Any] = {"tokens": self.tokens, "gap": self.gap, "first_token_delay": self.first_token_delay}
        if self.fault:
            fake.update(FAULTS.get(self.fault) or TOOL_FAULTS[self.fault])
        return orjson.dumps({
            "model": "soak-model",
            "stream": True,
            "messages": [
                {"role": "system", "content": "You are a friendly guide to the ISS."},
                {"role": "user", "content": f"Where is the station now? (turn {self.index})"},
            ],
            "x_fake": fake,
        })


def plan(count: int, abandon_share: float, abandon_window: float, fault_share: float, seed: int,
         thousand_calls: int = 0) -> list[Planned]:
    """The storm, seeded: streams last about 0.4-1.2 s, so most abandonments land mid-stream.
    `thousand_calls` requests (at seeded places in the storm, never abandoned) get the model that
    calls iss_passes 1,000 times."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        abandon = rng.random() < abandon_share
        fault = rng.choice(sorted(FAULTS)) if rng.random() < fault_share else None
        out.append(Planned(
            index=index,
            tokens=rng.randint(15, 40),
            gap=rng.choice((0.0, 0.01, 0.02, 0.03)),
            first_token_delay=rng.uniform(0.02, 0.3),
            fault=fault,
            abandon_at=rng.uniform(0.0, abandon_window) if abandon else None,
        ))
    for index in sorted(rng.sample(range(count), min(count, thousand_calls))):
        out[index] = Planned(index, out[index].tokens, 0.0, 0.0, "thousand_calls", None)
    return out


@dataclass
class Outcome:
    """How one request ended, as the caller saw it."""

    kind: str  # "completed", "abandoned", "error", "lost"
    detail: str = ""  # the error code, or what was lost
    seconds: float = 0.0
    first_token: float | None = None  # seconds from sending to the first content token, if one came
    ended: float = 0.0  # time.monotonic() when it ended


def classify(status: int, body: bytes, content_type: str) -> Outcome:
    """A finished answer: complete stream, well-formed error, or lost (with why)."""
    if status >= 500 and status not in (502, 503, 504):
        return Outcome("lost", f"http_{status}")
    if status != 200:
        try:
            error = orjson.loads(body)["error"]
            if isinstance(error["message"], str) and {"type", "param", "code"} <= set(error):
                if error.get("code") == "internal_error":
                    return Outcome("lost", "internal_error")
                return Outcome("error", str(error.get("code") or f"http_{status}"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            pass
        return Outcome("lost", f"http_{status}_not_an_openai_error")
    if not content_type.startswith("text/event-stream"):
        return Outcome("lost", "not_sse")
    events = [block[6:] for block in body.split(b"\n\n") if block.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        return Outcome("lost", "no_done")
    finish = None
    for payload in events[:-1]:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return Outcome("lost", "bad_chunk_relayed")
        if "error" in chunk:
            code = chunk["error"].get("code") if isinstance(chunk["error"], dict) else None
            if code == "internal_error":
                return Outcome("lost", "internal_error")
            return Outcome("error", str(code or "sse_error"))
        for choice in chunk.get("choices") or ():
            finish = choice.get("finish_reason") or finish
    if finish is None:
        return Outcome("lost", "no_finish_reason")
    return Outcome("completed")


async def one(session: aiohttp.ClientSession, url: str, item: Planned, timeout: float) -> Outcome:
    """Send one planned request; abandon it on time; never wait past `timeout`."""
    started = time.monotonic()
    limit = item.abandon_at if item.abandon_at is not None else timeout
    body = b""
    status, content_type = 0, ""
    first: float | None = None

    def ended(kind: str, detail: str = "") -> Outcome:
        now = time.monotonic()
        return Outcome(kind, detail, now - started, first, now)

    try:
        async with asyncio.timeout(limit):
            async with session.post(url, data=item.body()) as response:
                status, content_type = response.status, response.headers.get("Content-Type", "")
                async for block in response.content.iter_any():
                    body += block
                    if first is None and _CONTENT.search(body, max(0, len(body) - len(block) - 16)):
                        first = time.monotonic() - started
    except TimeoutError:
        if item.abandon_at is not None:
            return ended("abandoned")
        return ended("lost", "hang")
    except (aiohttp.ClientError, OSError) as exc:
        return ended("lost", f"connection_{type(exc).__name__}")
    # It ended (before the caller meant to leave, if it meant to): judge what it got.
    judged = classify(status, body, content_type)
    outcome = ended(judged.kind, judged.detail)
    if (item.fault is None or item.fault in COMPLETES) and outcome.kind == "error":
        # A clean request must not fail, whatever the ISS sources are doing.
        return ended("lost", f"clean_request_failed_{outcome.detail}")
    if item.fault is not None and item.fault not in COMPLETES | EITHER and outcome.kind == "completed":
        return ended("lost", f"fault_{item.fault}_not_reported")
    return outcome


@dataclass
class StormResult:
    """Counts by outcome; `lost` lists what went wrong."""

    requests: int = 0
    completed: int = 0
    abandoned: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    # Clean requests that completed (no fault, never abandoned): seconds to their first content token,
    # less the fake model's own planned delay before it (what the server and the machine added).
    first_token_added: list[float] = field(default_factory=list)
    thousand_calls: Counter[str] = field(default_factory=Counter)  # how each 1,000-call request ended
    outcomes: list[tuple[Planned, Outcome]] = field(default_factory=list)

    def add(self, outcome: Outcome, item: Planned | None = None) -> None:
        if item is not None:
            self.outcomes.append((item, outcome))
            if item.fault is None and outcome.kind == "completed" and outcome.first_token is not None:
                self.first_token_added.append(outcome.first_token - item.first_token_delay)
            if item.fault in TOOL_FAULTS:
                self.thousand_calls[outcome.kind if outcome.kind != "error" else f"error {outcome.detail}"] += 1
        self.requests += 1
        self.slowest = max(self.slowest, outcome.seconds)
        if outcome.kind == "completed":
            self.completed += 1
        elif outcome.kind == "abandoned":
            self.abandoned += 1
        elif outcome.kind == "error":
            self.errors[outcome.detail] += 1
        else:
            self.lost[outcome.detail] += 1


async def run_storm(
    url: str,
    items: list[Planned],
    concurrency: int,
    timeout: float,
    deadline: float,
    on_done: Callable[[Outcome], None] | None = None,
) -> StormResult:
    """Run the planned requests, `concurrency` at a time; none starts after `deadline` (monotonic)."""
    result = StormResult()
    queue = list(reversed(items))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue and time.monotonic() < deadline:
            item = queue.pop()
            outcome = await one(session, url, item, timeout)
            result.add(outcome, item)
            if on_done is not None:
                on_done(outcome)

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "application/json", "conversation-id": "soak"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return result
