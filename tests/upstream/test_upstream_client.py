"""What the upstream client sends: the method, the path joined to OPENAI_BASE_URL as the openai package
joins it, the headers (the bearer key, the configured ones, the request id) and the caller's JSON as
bytes; and that a stream read to its end leaves its connection in the pool for the next request."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.common.request_context import begin
from tests.conftest import UPSTREAM_KEY
from tests.upstream.upstream_direct import params, streamed, upstream_for


def _headers(upstream) -> dict[str, str]:
    return {name.lower(): value for name, value in upstream.headers[-1].items()}


async def test_a_stream_is_one_post_of_the_callers_json_with_the_bearer_key(upstream):
    body = {**params(tokens=3), "temperature": 0.25, "metadata": {"é": "ü"}}
    async with upstream_for(upstream.base_url) as client:
        chunks, error = await streamed(client, body)
    assert error is None and len(chunks) == 5  # role, 3 tokens, finish
    assert upstream.request_lines[-1] == "POST /v1/chat/completions"
    assert upstream.raw_bodies[-1] == orjson.dumps({**body, "stream": True})
    sent = _headers(upstream)
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["content-type"] == "application/json"
    assert sent["accept-encoding"] == "gzip, deflate"
    assert "x-request-id" not in sent  # no request in scope, none invented
    assert not [name for name in sent if name.startswith("x-stainless")]


async def test_a_whole_answer_is_the_same_post_with_stream_false(upstream):
    async with upstream_for(upstream.base_url) as client:
        answer = await client.complete(params(tokens=2), None)
    assert orjson.loads(answer)["choices"][0]["message"]["content"] == "The station"
    assert upstream.request_lines[-1] == "POST /v1/chat/completions"
    assert upstream.raw_bodies[-1] == orjson.dumps({**params(tokens=2), "stream": False})


async def test_configured_headers_and_the_request_id_reach_the_upstream(upstream):
    extra = (("HTTP-Referer", "https://station.example"), ("X-Title", "ISS layer"))
    async with upstream_for(upstream.base_url, upstream_headers=extra, openai_org_id="org-42",
                            openai_project_id="proj_7") as client:
        async def in_a_request() -> None:  # a task of its own, as each request is: the id stays in it
            begin("req-trace-1", "chat")
            _, error = await streamed(client, params(tokens=1))
            assert error is None

        await asyncio.ensure_future(in_a_request())
    sent = _headers(upstream)
    assert sent["http-referer"] == "https://station.example" and sent["x-title"] == "ISS layer"
    assert sent["openai-organization"] == "org-42" and sent["openai-project"] == "proj_7"
    assert sent["x-request-id"] == "req-trace-1"
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_a_configured_authorization_header_replaces_the_bearer_key(upstream):
    upstream.api_key = None
    async with upstream_for(upstream.base_url, upstream_headers=(("authorization", "Token gateway-1"),)) as client:
        _, error = await streamed(client, params(tokens=1))
    assert error is None
    assert [v for k, v in upstream.headers[-1].items() if k.lower() == "authorization"] == ["Token gateway-1"]


async def test_a_keyless_server_gets_no_authorization_header(upstream):
    upstream.api_key = None
    async with upstream_for(upstream.base_url, openai_api_key=None) as client:
        _, error = await streamed(client, params(tokens=1))
    assert error is None
    assert "authorization" not in _headers(upstream)


@pytest.mark.parametrize("suffix, expected", [
    ("/v1", "POST /v1/chat/completions"),
    ("/v1/", "POST /v1/chat/completions"),
    ("", "POST /chat/completions"),  # no /v1 added: the package never added one either
    ("/v1?api-version=2024-10-21", "POST /v1/chat/completions?api-version=2024-10-21"),
])
async def test_the_base_url_is_joined_as_the_openai_package_joins_it(upstream, suffix, expected):
    root = upstream.base_url.removesuffix("/v1")
    async with upstream_for(root + suffix) as client:
        await streamed(client, params(tokens=1))
    assert upstream.request_lines[-1] == expected


async def test_the_model_list_is_a_get_of_models_with_the_key(upstream):
    upstream.models_listed = ("llama3.2:1b", "qwen2.5:0.5b")
    async with upstream_for(upstream.base_url + "/") as client:
        assert await client.list_models() == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert upstream.request_lines[-1] == "GET /v1/models"


async def test_streams_read_to_their_end_share_one_kept_alive_connection(upstream):
    async with upstream_for(upstream.base_url) as client:
        for _ in range(5):
            _, error = await streamed(client, params(tokens=2))
            assert error is None
    assert upstream.requests == 5
    assert len(set(upstream.peers)) == 1, f"{len(set(upstream.peers))} connections for 5 sequential streams"
