"""An upstream 404: the caller learns the upstream found nothing, never the operator's URL or host;
the log names the URL that was called and the OPENAI_BASE_URL hint."""

from __future__ import annotations

import logging
import time

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


# --- issue 21: the two causes of a 404 name two different fixes --------------------------------------

OLLAMA_MISSING = {"error": 'model "llama3" not found, try pulling it first'}


def _model_404(shape: str) -> dict:
    if shape == "ollama":
        return {"fault": "status", "status": 404, "body": OLLAMA_MISSING}
    return {"fault": "status", "status": 404, "code": "model_not_found",
            "message": "The model `llama3` does not exist or you do not have access to it."}


@pytest.mark.parametrize("overrides", [{}])
@pytest.mark.parametrize("shape", ["ollama", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_the_upstream_lacks_names_model_map_llm_model_and_its_models(overrides, base_url, upstream,
                                                                                   shape, stream, caplog):
    caplog.set_level(logging.WARNING, logger="iss_llm")
    upstream.models_listed = ("llama3.2:1b", "qwen2.5:0.5b")
    response = await post_json(base_url, {"model": "llama3", "messages": MESSAGES, "stream": stream,
                                          "x_fake": _model_404(shape)})
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "upstream_not_found"
    for named in ("'llama3'", "MODEL_MAP", "LLM_MODEL", "llama3.2:1b", "qwen2.5:0.5b"):
        assert named in error["message"], error["message"]
    assert "OPENAI_BASE_URL" not in error["message"] and "address" not in error["message"]
    lines = [r.getMessage() for r in caplog.records if "404" in r.getMessage()]
    said = OLLAMA_MISSING["error"] if shape == "ollama" else "does not exist"
    assert any("MODEL_MAP" in line and "llama3.2:1b" in line and said in line for line in lines), lines
    assert not any("OPENAI_BASE_URL" in line for line in lines), lines


@pytest.mark.parametrize("overrides", [{}])
async def test_the_model_hint_uses_the_cached_list_and_bounds_it(overrides, base_url, upstream):
    upstream.models_listed = tuple(f"model-{n}" for n in range(25))
    body = {"model": "llama3", "messages": MESSAGES, "x_fake": _model_404("ollama")}
    first = error_of(await post_json(base_url, body))["message"]
    second = error_of(await post_json(base_url, body))["message"]
    assert upstream.model_lists == 1  # read once, then from what was read
    assert first == second
    assert "model-9" in first and "model-10" not in first and "and 15 more" in first


@pytest.mark.parametrize("overrides", [{}])
async def test_the_model_hint_never_waits_long_for_the_model_list(overrides, base_url, upstream):
    upstream.models_delay = 10.0
    started = time.monotonic()
    response = await post_json(base_url, {"model": "llama3", "messages": MESSAGES, "x_fake": _model_404("ollama")})
    took = time.monotonic() - started
    error = error_of(response)
    assert "MODEL_MAP" in error["message"] and "could not be read" in error["message"]
    assert took < 3.0, took


async def test_a_base_url_without_v1_names_openai_base_url_and_the_upstreams_words(upstream, caplog):
    """The fix for Ollama at http://host:11434 (no /v1): the log says so, with the upstream's own text."""
    from tests.upstream.upstream_direct import params, streamed, upstream_for

    caplog.set_level(logging.WARNING, logger="iss_llm")
    root = upstream.base_url.removesuffix("/v1").replace("http://", "http://operator:hunter2-secret@")
    async with upstream_for(root) as client:
        _, error = await streamed(client, params())
    assert error is not None and error.code == "upstream_not_found"
    assert "MODEL_MAP" not in error.message and "address" in error.message
    lines = [r.getMessage() for r in caplog.records if "404" in r.getMessage()]
    tried = f"POST http://127.0.0.1:{upstream.port}/chat/completions"
    assert any(tried in line and f"OPENAI_BASE_URL=http://127.0.0.1:{upstream.port}:" in line and "/v1" in line
               and "404: Not Found" in line for line in lines), lines
    assert not any("hunter2" in line or "operator" in line for line in lines), lines


@pytest.mark.parametrize("overrides", [{"models_cache_seconds": 0.001}])
async def test_the_model_hint_reads_the_list_again_once_it_is_older_than_models_cache_seconds(overrides, base_url,
                                                                                              upstream):
    body = {"model": "llama3", "messages": MESSAGES, "x_fake": _model_404("ollama")}
    first = error_of(await post_json(base_url, body))["message"]
    upstream.models_listed = ("llama3:8b",)  # pulled since
    second = error_of(await post_json(base_url, body))["message"]
    assert upstream.model_lists == 2
    assert "fake-model" in first and "llama3:8b" in second and "fake-model" not in second
