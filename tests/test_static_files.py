"""The static handler follows the house rules: 4xx not 500, plain-text errors, no query string in a log."""

from __future__ import annotations

import logging

from tornado.httpclient import AsyncHTTPClient


async def _get(url: str):
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=10)


async def test_a_nul_byte_in_a_static_path_is_a_400_without_a_traceback(base_url, caplog):
    with caplog.at_level(logging.DEBUG):
        response = await _get(base_url + "/static/console.js%00.css")
    assert response.code == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert b"<html" not in response.body.lower()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_static_error_is_plain_text_and_logged_without_its_query_string(base_url, caplog):
    with caplog.at_level(logging.DEBUG):
        outside = await _get(base_url + "/static/../server.py?token=leaked-console-token")
        missing = await _get(base_url + "/static/nothing-here.js?token=leaked-console-token")
    assert 400 <= outside.code < 500 and missing.code == 404
    for response in (outside, missing):
        assert response.headers["Content-Type"].startswith("text/plain")
        assert b"<html" not in response.body.lower()
    assert "leaked-console-token" not in caplog.text


async def test_a_static_file_is_still_served(base_url):
    response = await _get(base_url + "/static/console.js")
    assert response.code == 200 and b"function" in response.body
