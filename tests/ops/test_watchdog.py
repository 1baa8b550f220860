"""The worker watchdog (issue 19, finding 5): a stopped worker is killed and replaced, and the requests
it had open are counted as lost and closed in the console every worker shares through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from services.ops.heartbeat import Heartbeat, Lost, read_beat
from tests.console.test_cluster import open_console
from tests.ops.test_workers import _workers_env, serving, streams_on_every_worker, wait_until, wait_until_value
from tests.server.test_server_process import MESSAGES, ServerProcess

TIMEOUT_S = 2.0
# What detecting the silence may take past WORKER_TIMEOUT: the supervisor's poll (0.1 s) and a busy machine.
MARGIN_S = 3.0


def named_in_a_beat(here: Path, pid: int) -> int:
    """How many open requests worker `pid`'s last heartbeat named (the server runs with TMPDIR=here)."""
    for path in here.glob("iss-llm-beats-*/worker-*"):
        with contextlib.suppress(OSError, ValueError):
            beat = orjson.loads(path.read_bytes())
            if beat.get("pid") == pid:
                return len(beat.get("requests") or [])
    return 0


async def lost_total(base: str) -> float:
    response = await AsyncHTTPClient().fetch(base + "/metrics", raise_error=False, request_timeout=10)
    if response.code != 200:
        return -1.0
    return sum(sample.value for family in text_string_to_metric_families(response.body.decode())
               for sample in family.samples
               if sample.name == "iss_llm_chat_requests_total" and sample.labels.get("outcome") == "lost")


async def test_a_stopped_worker_is_replaced_and_its_open_request_counted_and_closed_as_lost(
    io_loop, paced_upstream, tmp_path, redis_server
):
    server = ServerProcess(
        _workers_env(tmp_path, paced_upstream, WORKER_TIMEOUT=str(TIMEOUT_S), REDIS_URL=redis_server.url,
                     TMPDIR=str(tmp_path)),
        "--port", "0", "--workers", "2",
    )
    await server.start()
    frozen = None
    try:
        port = await server.listening_port()
        base = f"http://127.0.0.1:{port}"
        await wait_until(lambda: len(serving(server)) == 2, 60, "two workers serving")
        first = serving(server)
        slow = {"messages": MESSAGES, "stream": True, "x_fake": {"tokens": 400, "gap": 0.05}}
        streams, owners = await streams_on_every_worker(base, first, slow)
        victim = owners[0]
        victims = owners.count(victim)
        frozen = psutil.Process(victim)
        # Its open requests named in a beat (one every TIMEOUT_S / 4) before its loop stops.
        await wait_until(lambda: named_in_a_beat(tmp_path, victim) == victims, 10, "the requests never named")
        frozen.suspend()  # SIGSTOP: its loop stops, and so do its beats
        stopped_at = time.monotonic()

        line = await server.wait_for_line(f"(pid {victim}) silent for", TIMEOUT_S + MARGIN_S + 30)
        killed_after = time.monotonic() - stopped_at
        assert "ERROR" in line and "WORKER_TIMEOUT=2s" in line and "SIGKILL" in line, line
        assert TIMEOUT_S - 1.0 <= killed_after <= TIMEOUT_S + MARGIN_S, killed_after
        # Replaced: a new pid started by the parent and logged, then serving.
        await server.wait_for_line(f"(pid {victim}) died (killed by signal 9)", 10)
        def started() -> list[int]:
            return [int(pid) for text in server.output for pid in re.findall(r"worker \d+ started \(pid (\d+)\)", text)]

        # A young death: the next one starts after a short pause (0.5 s), still well within the margin.
        await wait_until(lambda: len(started()) == 3, 10, "no new worker started")
        replaced_after = time.monotonic() - stopped_at
        assert replaced_after <= TIMEOUT_S + MARGIN_S, replaced_after
        new_pid = started()[-1]
        assert new_pid not in first
        await wait_until(lambda: new_pid in serving(server), 60, "the new worker serving")
        assert not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE

        # Its callers are not left hanging: their connections end (no [DONE]).
        for (reader, writer, seen), owner in zip(streams, owners, strict=True):
            if owner != victim:
                continue
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                seen += chunk
            assert b"[DONE]" not in seen
            writer.close()
        # Counted: outcome "lost", in the totals any worker answers for; and closed in the shared console.
        await wait_until_value(lambda: lost_total(base), victims, 30)
        # The end events go out once the new worker's link to the shared console is up (Hub.settle,
        # at most LOST_SETTLE_S): a console opened from then on shows them closed.
        deadline = time.monotonic() + 30
        while True:
            console = await open_console(base)
            try:
                statuses = [record["status"] for record in console.hello["requests"]]
            finally:
                console.close()
            if statuses.count("lost") == victims or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert statuses.count("lost") == victims, statuses
        assert statuses.count("streaming") == len(streams) - victims, statuses
        assert sum("silent for" in text for text in server.output) == 1  # the healthy worker was left alone
        for _, writer, _ in streams:
            writer.close()
        assert await server.stop() == 0
        server.assert_clean_output()
    finally:
        server.kill()
        if frozen is not None:
            with contextlib.suppress(psutil.Error):
                frozen.kill()


def test_a_beat_names_the_open_requests_bounded_and_a_bad_beat_reads_as_nothing(tmp_path):
    path = tmp_path / "worker-0"
    heartbeat = Heartbeat(path, 1.0)
    heartbeat.beat([("req_a", "/v1/chat/completions")] * 2000, 2000)
    lost = read_beat(path, 42)
    assert lost.pid == 42 and lost.count == 2000 and len(lost.requests) == 1000
    before = path.stat().st_mtime_ns
    time.sleep(0.01)  # a filesystem's mtime has a granularity; what is tested is that the beat moves it
    heartbeat.beat([("req_a", "/v1/chat/completions")] * 2000, 2000)  # unchanged: touched, not rewritten
    assert path.stat().st_mtime_ns > before
    for junk in (b"", b"[1]", b'{"open": "x", "requests": {"a": 1}}', b'{"open": -3, "requests": [[1, 2]]}'):
        path.write_bytes(junk)
        assert read_beat(path, 7) == Lost(7, 0)
    assert read_beat(tmp_path / "absent", 7) == Lost(7, 0)
