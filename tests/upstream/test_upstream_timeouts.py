"""Every wait on the upstream is bounded: the connection (UPSTREAM_CONNECT_TIMEOUT), the answer's head
and each read after it (UPSTREAM_TIMEOUT, which a slow but steady stream never meets); each is a 504."""

from __future__ import annotations

import time

from tests.fakes.raw_http import SilentUpstream, UnacceptingListener
from tests.upstream.upstream_direct import params, streamed, upstream_for


async def test_a_connection_that_never_completes_is_a_504_at_the_connect_timeout():
    listener = UnacceptingListener()
    try:
        async with upstream_for(listener.base_url, upstream_connect_timeout=0.3, upstream_timeout=5.0) as client:
            started = time.monotonic()
            chunks, error = await streamed(client, params())
            took = time.monotonic() - started
    finally:
        listener.close()
    assert error is not None and (error.status, error.code) == (504, "upstream_timeout")
    assert not chunks
    assert 0.25 < took < 2.5, took  # the connect timeout, not UPSTREAM_TIMEOUT


async def test_an_upstream_that_never_answers_is_a_504_at_the_timeout():
    silent = await SilentUpstream().start()
    try:
        async with upstream_for(silent.base_url, upstream_timeout=0.4) as client:
            started = time.monotonic()
            _, error = await streamed(client, params())
            took = time.monotonic() - started
            whole = time.monotonic()
            try:
                await client.complete(params(), None)
            except Exception as exc:
                whole_error = exc
            whole_took = time.monotonic() - whole
    finally:
        await silent.close()
    assert silent.requests == 2
    assert error is not None and (error.status, error.code) == (504, "upstream_timeout")
    assert 0.35 < took < 2.5, took
    assert (getattr(whole_error, "status", None), getattr(whole_error, "code", None)) == (504, "upstream_timeout")
    assert 0.35 < whole_took < 2.5, whole_took


async def test_a_stream_that_goes_quiet_is_a_504_after_its_first_chunks(upstream):
    async with upstream_for(upstream.base_url, upstream_timeout=0.4) as client:
        started = time.monotonic()
        chunks, error = await streamed(client, params(pause_after_role=3))
        took = time.monotonic() - started
    assert len(chunks) == 1  # the role chunk came, then nothing
    assert error is not None and (error.status, error.code) == (504, "upstream_timeout")
    assert took < 2.5, took


async def test_a_slow_steady_stream_outlasts_the_timeout_between_reads(upstream):
    # 6 gaps of 0.15 s: the stream takes about 0.9 s, more than twice UPSTREAM_TIMEOUT, each gap well within it.
    async with upstream_for(upstream.base_url, upstream_timeout=0.4) as client:
        chunks, error = await streamed(client, params(tokens=5, gap=0.15))
    assert error is None
    assert len(chunks) == 7
