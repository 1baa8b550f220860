"""ChatClient builds the chat request exactly as the openai package's own builder does, and leaves
every other request to it; through the whole client, the upstream receives the same request."""

from __future__ import annotations

import openai
import orjson
import pytest
from openai._models import FinalRequestOptions

from services.upstream.openai_client import ChatClient

BODY = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def _clients(**kwargs) -> tuple[openai.AsyncOpenAI, ChatClient]:
    settings = {"api_key": "sk-test-key", "base_url": "http://127.0.0.1:9/v1/", **kwargs}
    return openai.AsyncOpenAI(**settings), ChatClient(**settings)


def _options(**changes) -> FinalRequestOptions:
    values = {"method": "post", "url": "/chat/completions", "content": BODY, "files": None, "json_data": None,
              "security": {"bearer_auth": True}, "headers": {"X-Request-Id": "req-1"}, **changes}
    return FinalRequestOptions.construct(**values)


def _same(one, two) -> None:
    assert str(one.url) == str(two.url)
    assert one.method == two.method
    assert list(one.headers.multi_items()) == list(two.headers.multi_items())
    assert one.extensions == two.extensions
    assert one.content == two.content


@pytest.mark.parametrize("changes", [
    {},
    {"timeout": 3.5},
    {"timeout": openai.Timeout(20.0, connect=2.0)},
    {"headers": {"x-stainless-retry-count": openai.Omit(), "Idempotency-Key": "k-1"}},
    {"max_retries": 0},
])
def test_the_chat_request_is_the_one_the_sdk_builds(changes):
    sdk, ours = _clients(default_headers={"X-Team": "station"}, timeout=openai.Timeout(30.0, connect=5.0))
    for retries_taken in (0, 2):
        _same(ours._build_request(_options(**changes), retries_taken=retries_taken),
              sdk._build_request(_options(**changes), retries_taken=retries_taken))
    assert ours._chat_url is not None  # the fast path ran


@pytest.mark.parametrize("changes", [
    {"url": "/models", "method": "get", "content": None},
    {"content": None, "json_data": {"model": "m"}},
    {"params": {"api-version": "1"}},
])
def test_any_other_request_is_left_to_the_sdk(changes):
    sdk, ours = _clients()
    _same(ours._build_request(_options(**changes)), sdk._build_request(_options(**changes)))
    assert ours._chat_url is None  # the SDK's own builder made it


def test_a_multipart_request_fails_as_it_does_in_the_sdk():
    sdk, ours = _clients()
    multipart = {"headers": {"Content-Type": "multipart/form-data"}}
    with pytest.raises(TypeError) as theirs:
        sdk._build_request(_options(**multipart))
    with pytest.raises(TypeError) as mine:
        ours._build_request(_options(**multipart))
    assert str(mine.value) == str(theirs.value)


def test_a_client_with_a_default_query_is_left_to_the_sdk():
    sdk, ours = _clients(default_query={"api-version": "2024-10-21"})
    request = ours._build_request(_options())
    _same(request, sdk._build_request(_options()))
    assert request.url.params["api-version"] == "2024-10-21"


def test_copies_keep_the_fast_builder_and_their_own_url():
    _, ours = _clients()
    ours._build_request(_options())
    copy = ours.with_options(base_url="http://127.0.0.1:10/other/")
    assert isinstance(copy, ChatClient)
    assert str(copy._build_request(_options()).url) == "http://127.0.0.1:10/other/chat/completions"
