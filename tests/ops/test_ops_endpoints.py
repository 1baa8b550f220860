"""/metrics, /healthz's details and /iss*: who may read them, and under which Host (issue 19, finding 8)."""

from __future__ import annotations

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient

from config import ConfigError, load_settings

KEY = "sk-server-key-0123456789"
METRICS_TOKEN = "prometheus-scrape-token-0123"
DETAILS = {"iss", "chat", "connections", "asyncio_tasks"}


async def _get(base_url: str, path: str, headers: dict[str, str] | None = None):
    return await AsyncHTTPClient().fetch(base_url + path, headers=headers or {}, raise_error=False,
                                         request_timeout=10)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("overrides", [
    {"server_api_key": KEY, "metrics_token": METRICS_TOKEN},
    {"server_api_keys": (("tavus", KEY),), "metrics_token": METRICS_TOKEN},
], ids=["SERVER_API_KEY", "SERVER_API_KEYS"])
async def test_with_a_key_set_metrics_and_health_details_need_a_key_or_the_metrics_token(base_url, overrides):
    refused = await _get(base_url, "/metrics")
    assert refused.code == 401 and orjson.loads(refused.body)["error"]["code"] == "missing_api_key"
    assert (await _get(base_url, "/metrics", _bearer("wrong-token"))).code == 401
    for token in (KEY, METRICS_TOKEN):  # Prometheus sends `authorization: {credentials: ...}` as a bearer
        scraped = await _get(base_url, "/metrics", _bearer(token))
        assert scraped.code == 200 and b"iss_llm_chat_in_flight" in scraped.body
        details = orjson.loads((await _get(base_url, "/healthz", _bearer(token))).body)
        assert DETAILS <= set(details)
    anyone = orjson.loads((await _get(base_url, "/healthz")).body)
    assert anyone["status"] == "ok" and not DETAILS & set(anyone)


@pytest.mark.parametrize("overrides", [{}])
async def test_without_a_key_a_rebound_host_reads_neither_metrics_nor_details_nor_the_iss(base_url, overrides):
    # A page that rebinds its own name to 127.0.0.1 sends that name as Host: the loopback server
    # answers it liveness only. The same requests under a local name are answered in full.
    rebound = {"Host": "attacker.example"}
    metrics = await _get(base_url, "/metrics", rebound)
    assert metrics.code == 403 and orjson.loads(metrics.body)["error"]["code"] == "host_not_allowed"
    for path in ("/iss", "/iss/crew", "/iss/passes?lat=51.5&lon=-0.1"):
        response = await _get(base_url, path, rebound)
        assert response.code == 403, (path, response.code)
    health = await _get(base_url, "/healthz", rebound)
    assert health.code == 200 and not DETAILS & set(orjson.loads(health.body))
    port = base_url.rsplit(":", 1)[1]
    local = {"Host": f"localhost:{port}"}
    assert (await _get(base_url, "/metrics", local)).code == 200
    assert DETAILS <= set(orjson.loads((await _get(base_url, "/healthz", local)).body))
    assert (await _get(base_url, "/iss", local)).code in (200, 503)


@pytest.mark.parametrize("overrides", [{"server_api_key": KEY, "metrics_public": True}])
async def test_metrics_public_on_purpose_with_a_key_still_checks_the_host(base_url, overrides):
    assert (await _get(base_url, "/metrics")).code == 200
    assert DETAILS <= set(orjson.loads((await _get(base_url, "/healthz")).body))
    assert (await _get(base_url, "/metrics", {"Host": "attacker.example"})).code == 403
    # The key opens it under any name (a scraper reaching the server through a proxy).
    assert (await _get(base_url, "/metrics", {"Host": "attacker.example", **_bearer(KEY)})).code == 200


def test_metrics_public_reads_auto_true_or_false():
    def load(**env: str):
        return load_settings([], environ=env, env_file=None)

    assert load().ops_public is True  # no key: nothing to ask for
    assert load(SERVER_API_KEY=KEY).ops_public is False
    assert load(METRICS_TOKEN=METRICS_TOKEN).ops_public is False
    assert load(SERVER_API_KEY=KEY, METRICS_PUBLIC="true").ops_public is True
    assert load(SERVER_API_KEY=KEY, METRICS_PUBLIC="auto").ops_public is False
    assert load(METRICS_TOKEN=METRICS_TOKEN, METRICS_PUBLIC="false").ops_public is False
    with pytest.raises(ConfigError, match="METRICS_PUBLIC"):
        load(METRICS_PUBLIC="false")  # nothing a scraper could send
