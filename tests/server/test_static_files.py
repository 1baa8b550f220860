"""The static handler follows the house rules: only the pages' assets, 4xx not 500, the JSON error
object, no query string in a log."""

from __future__ import annotations

import logging
import re

import pytest
from tornado.httpclient import AsyncHTTPClient

from handlers.static import servable
from tests.conftest import ROOT, error_of
from tests.console.test_console import console_cookie


async def _get(url: str, **kwargs):
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=10, **kwargs)


async def test_a_nul_byte_in_a_static_path_is_a_400_without_a_traceback(base_url, caplog):
    with caplog.at_level(logging.DEBUG):
        response = await _get(base_url + "/static/console.js%00.css")
    assert response.code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert error_of(response)["type"] == "invalid_request_error"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_static_error_is_the_json_error_object_and_logged_without_its_query_string(base_url, caplog):
    with caplog.at_level(logging.DEBUG):
        outside = await _get(base_url + "/static/../server.py?token=leaked-console-token")
        missing = await _get(base_url + "/static/nothing-here.js?token=leaked-console-token")
    assert 400 <= outside.code < 500 and missing.code == 404
    for response in (outside, missing):
        assert response.headers["Content-Type"].startswith("application/json")
        error_of(response)
        assert b"<html" not in response.body.lower()
    assert "leaked-console-token" not in caplog.text


async def test_a_static_file_is_still_served(base_url):
    response = await _get(base_url + "/static/console.js")
    assert response.code == 200 and b"function" in response.body


async def test_every_asset_the_console_page_loads_is_served(base_url):
    cookie = await console_cookie(base_url)
    page = await _get(base_url + "/console", headers={"Cookie": cookie})
    assert page.code == 200
    assets = re.findall(r'"(/static/[^"]+)"', page.body.decode())
    assert len(assets) >= 4, assets  # the style sheet, two scripts, the land polygons
    for asset in assets:
        response = await _get(base_url + asset.replace("&amp;", "&"))
        assert response.code == 200, asset


@pytest.mark.parametrize("path", ["README.md", "readme.md", "./README.md", "README.md?v=1"])
async def test_what_the_pages_do_not_use_is_a_json_404(base_url, path):
    assert (ROOT / "static" / "README.md").is_file()  # it is there, and still not served
    for method in ("GET", "HEAD"):
        response = await _get(base_url + "/static/" + path, method=method)
        assert response.code == 404, (path, method)
        assert response.headers["Content-Type"].startswith("application/json")
        if method == "GET":
            assert error_of(response)["code"] == "not_found"
            assert b"Console assets" not in response.body


def test_only_asset_extensions_outside_dotfiles_are_servable():
    for path in ("console.js", "console-map.js", "console.css", "land-110m.json", "fonts/x.json"):
        assert servable(path), path
    for path in ("README.md", ".env", ".hidden.js", ".git/config", "sub/.cache/x.js", "console.js.map",
                 "server.py", "notes.txt", "", "console.JS"):
        assert not servable(path), path
