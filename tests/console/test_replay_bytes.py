"""The replay's bounds are in bytes (issue 19, finding 7): one text buffer per record, cut at
CONSOLE_RECORD_BYTES with a marker, and every record together within CONSOLE_BUFFER_BYTES, oldest out
first. tracemalloc measures what a record of 65,600 one-character tokens keeps."""

from __future__ import annotations

import gc
import tracemalloc

import orjson

from services.console.replay import RequestLog, cut_marker


def _request(rid: str, **fields) -> dict:
    return {"type": "request", "id": rid, "t": 1.0, "messages": [{"role": "user", "content": "hi"}], **fields}


def _token(rid: str, text: str) -> dict:
    return {"type": "tokens", "id": rid, "t": 1.0, "text": text}


def test_a_record_of_65600_one_character_tokens_keeps_one_buffer_not_one_object_per_token():
    log = RequestLog(100)
    # Each token its own str, as parsed from its own chunk (orjson does not reuse one-character strings).
    tokens = [orjson.loads(b'"x"') for _ in range(65_600)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log.record(_request("r1"))
        for text in tokens:
            log.record(_token("r1", text))
        del text
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del tokens
    gc.collect()
    # The text itself is 64 KiB; one object per token was ~4.6 MB.
    assert kept < 160 * 1024, kept
    [record] = log.snapshot()
    assert record["text"] == "x" * 65_536 + cut_marker(64) and record["text_truncated"]


def test_the_bound_is_in_bytes_and_cuts_between_characters():
    log = RequestLog(10, record_bytes=9)
    log.record(_request("r1"))
    for piece in ("héllo", " wörld", "!"):  # 6 + 7 + 1 bytes
        log.record(_token("r1", piece))
    log.record({"type": "iss_tool", "id": "r1", "t": 1.0, "name": "iss_crew", "arguments": "{}", "result": "{}",
                "ok": True, "ms": 1.0, "round": 1})
    [record] = log.snapshot()
    # 9 bytes end inside "ö": what is kept stops before it, "héllo w" (8 bytes).
    assert record["text"] == "héllo w" + cut_marker(14 - 8)
    assert record["tools"][0]["text_at"] == len("héllo w")  # in characters, as the page counts


def test_the_buffer_keeps_to_its_total_in_bytes_oldest_first():
    log = RequestLog(100, record_bytes=64 * 1024, buffer_bytes=200 * 1024)
    for n in range(10):
        log.record(_request(f"r{n}"))
        log.record(_token(f"r{n}", "y" * 60_000))
        log.record({"type": "done", "id": f"r{n}", "t": 2.0})
    kept = [record["id"] for record in log.snapshot()]
    assert kept == ["r7", "r8", "r9"]  # 3 × ~60 KB fit in 200 KiB, 4 do not
    assert log.bytes <= 200 * 1024 and log.evicted_for_bytes == 7
    # One record larger than the whole buffer still stays (the newest is always kept), cut at its bound.
    small = RequestLog(100, record_bytes=64 * 1024, buffer_bytes=1024)
    small.record(_request("big"))
    small.record(_token("big", "z" * 100_000))
    [record] = small.snapshot()
    assert record["id"] == "big" and record["text"].startswith("z" * 65_536)
