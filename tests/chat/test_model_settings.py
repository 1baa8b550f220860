"""Model names: MODEL_MAP, /v1/models from the upstream (cached), absurd names, a 404 that names its URL."""

from __future__ import annotations

import orjson
import pytest

from config import ConfigError, load_settings
from tests.conftest import error_of, post_json
from tests.server.test_server_process import _free_port

MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]


@pytest.mark.parametrize("overrides", [{"model_map": (("nova-iss", "upstream-a"), ("*", "upstream-b"))}])
async def test_model_map_maps_callers_names_to_the_upstreams(base_url, upstream):
    for requested, expected in (("nova-iss", "upstream-a"), ("tavus-llama", "upstream-b"), (None, "upstream-b")):
        body = {"messages": MESSAGES, **({"model": requested} if requested else {})}
        assert (await post_json(base_url, body)).code == 200
        assert upstream.bodies[-1]["model"] == expected


def test_model_map_is_checked_at_start():
    settings = load_settings([], environ={"MODEL_MAP": "nova-iss=gpt-4o-mini, *=gpt-4o"}, env_file=None)
    assert settings.model_map == (("nova-iss", "gpt-4o-mini"), ("*", "gpt-4o"))
    with pytest.raises(ConfigError, match="MODEL_MAP"):
        load_settings([], environ={"MODEL_MAP": "nova-iss"}, env_file=None)


@pytest.mark.parametrize("overrides", [{"model_map": (("nova-iss", "fake-model"),)}])
async def test_models_lists_what_the_upstream_serves_once_per_cache_period(base_url, upstream):
    for _ in range(3):
        response = await post_json(base_url, None, path="/v1/models", method="GET")
        assert response.code == 200
        ids = [item["id"] for item in orjson.loads(response.body)["data"]]
        assert ids == ["fake-model", "nova-iss"]
    assert upstream.model_lists == 1


@pytest.mark.parametrize("overrides", [{"openai_base_url": f"http://127.0.0.1:{_free_port()}/v1",
                                        "model_map": (("nova-iss", "gpt-4o"),)}])
async def test_models_falls_back_to_the_configured_names(base_url):
    response = await post_json(base_url, None, path="/v1/models", method="GET")
    assert response.code == 200
    assert [item["id"] for item in orjson.loads(response.body)["data"]] == ["gpt-4o-mini", "nova-iss", "gpt-4o"]


async def test_a_model_name_over_256_characters_is_a_400(base_url, upstream):
    response = await post_json(base_url, {"model": "m" * 257, "messages": MESSAGES})
    assert response.code == 400
    assert error_of(response)["code"] == "model_too_long"
    assert upstream.requests == 0
    assert (await post_json(base_url, {"model": "m" * 256, "messages": MESSAGES})).code == 200
