"""An upstream 404: the caller learns the upstream found nothing, never the operator's URL or host;
the log names the URL that was called and the OPENAI_BASE_URL hint."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import error_of, post_json

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


@pytest.fixture
def overrides(upstream):
    # A common mistake: a base URL that already ends in /chat/completions.
    return {"openai_base_url": upstream.base_url + "/chat/completions"}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_404_keeps_the_url_in_the_log_and_out_of_the_answer(base_url, upstream, stream, caplog):
    caplog.set_level(logging.WARNING, logger="iss_llm")
    response = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": stream})
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "upstream_not_found"
    assert "404" in error["message"]
    text = response.body.decode()
    for leak in ("http://", "127.0.0.1", str(upstream.port), "/chat/completions", "OPENAI_BASE_URL"):
        assert leak not in text, f"{leak!r} reached the caller: {text}"
    shown = f"POST http://127.0.0.1:{upstream.port}/v1/chat/completions/chat/completions"
    lines = [r.getMessage() for r in caplog.records if "404" in r.getMessage()]
    assert any(shown in line and "OPENAI_BASE_URL" in line for line in lines), lines


@pytest.mark.parametrize("overrides", [{}])  # the right base URL: the upstream itself answers 404
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_404_body_that_echoes_the_path_stays_in_the_log(overrides, base_url, upstream, stream,
                                                                          caplog):
    """OpenAI's own 404 says `Invalid URL (POST /v1/...)`: a gateway's path may carry account ids."""
    caplog.set_level(logging.WARNING, logger="iss_llm")
    echoed = "Invalid URL (POST /v1/acct-1234/deployments/d-77/chat/completions)"
    response = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": stream,
                                          "x_fake": {"fault": "status", "status": 404, "message": echoed}})
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "upstream_not_found"
    for leak in ("acct-1234", "d-77", "Invalid URL", "/v1/"):
        assert leak not in response.body.decode()
    assert any(echoed in r.getMessage() for r in caplog.records)
