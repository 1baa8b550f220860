"""A kept-alive connection the upstream closed while it idled is sent on again, once, at once; never
once the answer began, never for a new connection, and UPSTREAM_MAX_RETRIES retries a 503 with backoff."""

from __future__ import annotations

import asyncio
import time

from tests.fakes.raw_http import ANSWER_IT, CLOSE, HALF, STATUS_503, ScriptedUpstream
from tests.upstream.upstream_direct import params, streamed, upstream_for


async def _scripted(policy) -> ScriptedUpstream:
    return await ScriptedUpstream(policy).start()


async def test_a_dead_pooled_connection_is_sent_on_again_once_on_a_new_one():
    # Every connection's second request finds it closed: the upstream's idle timeout, met in flight.
    server = await _scripted(lambda connection, on_it, overall: CLOSE if on_it == 2 else ANSWER_IT)
    try:
        async with upstream_for(server.base_url) as client:
            first, error = await streamed(client, params())
            assert error is None and len(first) == 1
            started = time.monotonic()
            second, error = await streamed(client, params())
            took = time.monotonic() - started
    finally:
        await server.close()
    assert error is None and len(second) == 1
    assert server.requests == 3 and server.connections == 2  # the dead one, then one new connection
    assert server.received[1] == server.received[2]  # the same request again
    assert took < 1.0  # at once, no backoff


async def test_a_retry_that_dies_too_is_not_retried_again():
    server = await _scripted(lambda connection, on_it, overall: ANSWER_IT if overall == 1 else CLOSE)
    try:
        async with upstream_for(server.base_url) as client:
            await streamed(client, params())
            chunks, error = await streamed(client, params())
    finally:
        await server.close()
    assert error is not None and (error.status, error.code) == (502, "upstream_unreachable")
    assert not chunks
    assert server.requests == 3  # the first stream, the dead pooled connection, exactly one retry


async def test_no_retry_once_the_answer_began():
    server = await _scripted(lambda connection, on_it, overall: HALF if on_it == 2 else ANSWER_IT)
    try:
        async with upstream_for(server.base_url) as client:
            await streamed(client, params())
            chunks, error = await streamed(client, params())
    finally:
        await server.close()
    assert len(chunks) == 1  # the caller already has the first event: sending again would repeat it
    assert error is not None and (error.status, error.code) == (502, "upstream_dropped")
    assert server.requests == 2


async def test_a_new_connection_that_dies_is_not_retried():
    server = await _scripted(lambda connection, on_it, overall: CLOSE)
    try:
        async with upstream_for(server.base_url) as client:
            _, error = await streamed(client, params())
    finally:
        await server.close()
    assert error is not None and (error.status, error.code) == (502, "upstream_unreachable")
    assert server.requests == 1


async def test_upstream_max_retries_retries_a_503_after_a_pause():
    server = await _scripted(lambda connection, on_it, overall: STATUS_503 if overall == 1 else ANSWER_IT)
    try:
        async with upstream_for(server.base_url, upstream_max_retries=1) as client:
            started = time.monotonic()
            chunks, error = await streamed(client, params())
            took = time.monotonic() - started
        async with upstream_for(server.base_url) as client:  # the default: no retry
            server.requests = 0
            server.policy = lambda connection, on_it, overall: STATUS_503
            _, refused = await streamed(client, params())
    finally:
        await server.close()
    assert error is None and len(chunks) == 1
    assert took >= 0.3  # the first backoff: 0.5 s less at most a quarter
    assert refused is not None and (refused.status, refused.code) == (502, "upstream_error")
    assert "busy" in refused.message
    assert server.requests == 1


async def test_a_stream_whose_body_ends_after_done_still_leaves_its_connection_in_the_pool():
    from tests.fakes.raw_http import LATE_END

    server = await _scripted(lambda connection, on_it, overall: LATE_END)
    try:
        async with upstream_for(server.base_url) as client:
            started = time.monotonic()
            first, error = await streamed(client, params())
            took = time.monotonic() - started
            assert error is None and len(first) == 1
            await asyncio.wait_for(client._http.drained(), 2.0)
            second, error = await streamed(client, params())
            assert error is None and len(second) == 1
    finally:
        await server.close()
    assert took < 0.25, took  # [DONE] ends the stream for the caller at once; the end of the body is awaited aside
    assert server.requests == 2 and server.connections == 1
