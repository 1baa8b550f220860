"""Each upstream status becomes the caller's error as before: a 400/422 is the caller's (400), a 429 stays
a 429, anything else the upstream's (502), never a 500; the upstream's text is passed on redacted and
logged; a redirect is not followed; an unreachable upstream is a 502."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import UPSTREAM_KEY
from tests.upstream.upstream_direct import params, streamed, upstream_for


@pytest.mark.parametrize("status, caller_status, code, kind", [
    (400, 400, "upstream_rejected", "invalid_request_error"),
    (401, 502, "upstream_error", "upstream_error"),
    (403, 502, "upstream_error", "upstream_error"),
    (404, 502, "upstream_not_found", "upstream_error"),
    (409, 502, "upstream_error", "upstream_error"),
    (422, 400, "upstream_rejected", "invalid_request_error"),
    (429, 429, "upstream_rate_limited", "rate_limit_error"),
    (500, 502, "upstream_error", "upstream_error"),
    (503, 502, "upstream_error", "upstream_error"),
    (529, 502, "upstream_error", "upstream_error"),
])
@pytest.mark.parametrize("stream", [True, False])
async def test_each_status_maps_to_the_callers_error(upstream, status, caller_status, code, kind, stream, caplog):
    caplog.set_level(logging.WARNING, logger="iss_llm")
    body = params(fault="status", status=status, message=f"the upstream's own words {status}")
    async with upstream_for(upstream.base_url) as client:
        if stream:
            _, error = await streamed(client, body)
        else:
            try:
                await client.complete(body, None)
                error = None
            except Exception as exc:
                error = exc
    assert error is not None
    assert (error.status, error.code, error.type) == (caller_status, code, kind)
    assert error.status != 500
    if status not in {401, 403, 404}:  # a 404's text may echo the operator's path, a 401's the key's tail: the log only
        assert f"the upstream's own words {status}" in error.message
        assert str(status) in error.message or status in {400, 422, 429}
    assert any(f"the upstream's own words {status}" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("body", [
    {"error": "model is loading, try again"},  # Ollama's shape: the error is a string
    {"object": "error", "message": "model is loading, try again", "type": "ServiceUnavailable", "code": 503},  # vLLM
])
async def test_the_upstreams_message_is_found_in_other_servers_shapes(upstream, body):
    async with upstream_for(upstream.base_url) as client:
        _, error = await streamed(client, params(fault="status", status=503, body=body))
    assert error is not None and error.code == "upstream_error"
    assert error.message == "The upstream LLM answered 503: model is loading, try again"


async def test_a_plain_text_error_body_is_passed_on_as_text(upstream):
    async with upstream_for(upstream.base_url) as client:
        _, error = await streamed(client, params(fault="status", status=502, text="<h1>Bad   gateway</h1>\n"))
    assert error is not None and error.message == "The upstream LLM answered 502: <h1>Bad gateway</h1>"


async def test_a_key_the_upstream_echoes_is_redacted_for_the_caller_and_the_log(upstream, caplog):
    caplog.set_level(logging.WARNING, logger="iss_llm")
    async with upstream_for(upstream.base_url) as client:
        _, error = await streamed(client, params(fault="status", status=401, echo_key=True))
    assert error is not None and error.code == "upstream_error"
    # The caller learns the operator's credentials were refused, nothing of them (not even a masked tail).
    assert UPSTREAM_KEY not in error.message and "you sent" not in error.message
    assert "credentials" in error.message and "OPENAI_API_KEY" in error.message
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "you sent" in logged and UPSTREAM_KEY not in logged and "***" in logged


async def test_an_upstream_that_is_not_listening_is_unreachable_not_a_timeout(upstream):
    base_url = upstream.base_url
    await upstream.close()
    async with upstream_for(base_url) as client:
        _, error = await streamed(client, params())
    assert error is not None and (error.status, error.code) == (502, "upstream_unreachable")


async def test_a_redirect_is_not_followed(upstream):
    from aiohttp import web

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(location=upstream.base_url + "/chat/completions")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with upstream_for(f"http://127.0.0.1:{port}/v1") as client:
            _, error = await streamed(client, params())
    finally:
        await runner.cleanup()
    assert error is not None and (error.status, error.code) == (502, "upstream_error")
    assert "301" in error.message
    assert upstream.requests == 0  # never re-sent as a GET elsewhere


@pytest.fixture
def self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


async def test_an_upstream_whose_certificate_does_not_verify_is_refused(upstream, self_signed, caplog):
    """TLS verification is on: a self-signed certificate is a 502, and nothing is sent."""
    import ssl

    from aiohttp import web

    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(upstream.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    caplog.set_level(logging.WARNING, logger="iss_llm")
    try:
        async with upstream_for(f"https://127.0.0.1:{port}/v1") as client:
            _, error = await streamed(client, params())
    finally:
        await runner.cleanup()
    assert error is not None and (error.status, error.code) == (502, "upstream_unreachable")
    assert upstream.requests == 0
    assert any("certificate" in r.getMessage().lower() for r in caplog.records)
