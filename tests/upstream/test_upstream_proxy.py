"""The upstream is reached through the proxy the environment names (HTTP_PROXY, NO_PROXY), as the
openai package reached it: a forward proxy on loopback counts what goes through it."""

from __future__ import annotations

import pytest

from tests.fakes.raw_http import CountingProxy
from tests.upstream.upstream_direct import params, streamed, upstream_for


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_requests_go_through_the_proxy_the_environment_names(upstream, no_proxy_env):
    proxy = await CountingProxy().start()
    no_proxy_env.setenv("HTTP_PROXY", proxy.url)
    try:
        async with upstream_for(upstream.base_url) as client:
            chunks, error = await streamed(client, params(tokens=2))
            models = await client.list_models()
    finally:
        await proxy.close()
    assert error is None and len(chunks) == 4
    assert models == ["fake-model"]
    # The proxy relays a connection's first request line in absolute form (later ones on it are piped).
    assert proxy.targets[0] == upstream.base_url + "/chat/completions"
    assert list(upstream.request_lines) == ["POST /v1/chat/completions", "GET /v1/models"]


async def test_no_proxy_for_the_upstreams_host_goes_direct(upstream, no_proxy_env):
    proxy = await CountingProxy().start()
    no_proxy_env.setenv("HTTP_PROXY", proxy.url)
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    try:
        async with upstream_for(upstream.base_url) as client:
            _, error = await streamed(client, params(tokens=2))
    finally:
        await proxy.close()
    assert error is None
    assert proxy.targets == []

