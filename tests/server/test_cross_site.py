"""Without SERVER_API_KEY, a web page on another site cannot use the server through a browser."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import error_of, post_json

BODY = {"model": "m", "messages": [{"role": "user", "content": "Where is the ISS?"}]}


async def test_a_foreign_origin_is_refused_before_anything_goes_upstream(base_url, upstream):
    response = await post_json(base_url, BODY, headers={"Origin": "https://evil.example"})
    assert response.code == 403
    assert error_of(response)["code"] == "cross_origin_refused"
    null_origin = await post_json(base_url, BODY, headers={"Origin": "null"})
    assert null_origin.code == 403
    assert upstream.requests == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_a_body_a_page_may_send_without_asking_is_refused(base_url, upstream, content_type):
    response = await post_json(base_url, BODY, headers={"Content-Type": content_type})
    assert response.code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    assert upstream.requests == 0


async def test_a_rebound_host_name_is_refused_on_loopback(base_url, upstream):
    response = await post_json(base_url, BODY, headers={"Host": "attacker.example"})
    assert response.code == 403
    assert error_of(response)["code"] == "host_not_allowed"
    assert upstream.requests == 0


@pytest.mark.parametrize("host", ["evillocalhost", "evillocalhost:5000", "localhost.attacker.example"])
async def test_a_name_that_only_ends_like_localhost_is_refused(base_url, upstream, host):
    # A name under the attacker's control that merely ends in "localhost" is not a local name;
    # only localhost itself and names under ".localhost" are.
    response = await post_json(base_url, BODY, headers={"Host": host})
    assert response.code == 403, response.body
    assert error_of(response)["code"] == "host_not_allowed"
    assert upstream.requests == 0
    port = base_url.rsplit(":", 1)[1]
    assert (await post_json(base_url, BODY, headers={"Host": f"app.localhost:{port}"})).code == 200


@pytest.mark.parametrize("overrides", [{"host": "0.0.0.0"}])
async def test_listening_beyond_loopback_a_rebound_name_is_still_refused_and_addresses_answer(base_url, upstream):
    # A page whose name its author points at a server on the visitor's network (one the author
    # cannot reach directly) sends that name as Host: refused. Addresses cannot be rebound.
    port = base_url.rsplit(":", 1)[1]
    for host in ("attacker.example", f"attacker.example:{port}", "192-168-1-5.nip.example"):
        response = await post_json(base_url, BODY, headers={"Host": host})
        assert response.code == 403 and error_of(response)["code"] == "host_not_allowed", host
        assert "IP addresses and local names" in error_of(response)["message"]
    assert upstream.requests == 0
    for host in (f"192.168.1.5:{port}", "10.0.0.7", f"[fd00::5]:{port}", f"localhost:{port}"):
        assert (await post_json(base_url, BODY, headers={"Host": host})).code == 200, host


@pytest.mark.parametrize("overrides", [{"allowed_hosts": ("iss.example.com",)}])
async def test_allowed_hosts_adds_names(base_url):
    assert (await post_json(base_url, BODY, headers={"Host": "iss.example.com"})).code == 200
    assert (await post_json(base_url, BODY, headers={"Host": "other.example.com"})).code == 403


async def test_api_clients_and_the_same_origin_still_work(base_url, client):
    # The openai client: JSON, no Origin, Host 127.0.0.1:port.
    completion = await client.chat.completions.create(model="m", messages=BODY["messages"])
    assert completion.choices[0].message.content
    port = base_url.rsplit(":", 1)[1]
    for headers in ({"Host": f"localhost:{port}"}, {"Origin": base_url},
                    {"Content-Type": "application/json; charset=utf-8"}):
        response = await post_json(base_url, BODY, headers=headers)
        assert response.code == 200, (headers, response.body)
        assert orjson.loads(response.body)["choices"]


@pytest.mark.parametrize("overrides", [{"server_api_key": "sk-server-key-0123456789"}])
async def test_with_a_key_set_the_key_is_what_matters(base_url):
    headers = {"Authorization": "Bearer sk-server-key-0123456789", "Origin": "https://app.example",
               "Host": "iss.example.com"}
    assert (await post_json(base_url, BODY, headers=headers)).code == 200
    assert (await post_json(base_url, BODY, headers={"Origin": "https://app.example"})).code == 401
