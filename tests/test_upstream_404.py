"""An upstream 404 names the URL that was called (a base URL ending in /chat/completions, say)."""

from __future__ import annotations

import pytest

from tests.conftest import error_of, post_json

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


@pytest.fixture
def overrides(upstream):
    # A common mistake: a base URL that already ends in /chat/completions.
    return {"openai_base_url": upstream.base_url + "/chat/completions"}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_404_names_the_url_that_was_called(base_url, upstream, stream):
    response = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": stream})
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "upstream_not_found"
    assert f"POST http://127.0.0.1:{upstream.port}/v1/chat/completions/chat/completions" in error["message"]
    assert "OPENAI_BASE_URL" in error["message"]
