"""The caller's X-Request-Id as the console shows it, in a real browser (Debian's Chromium)."""

from __future__ import annotations

from tests.conftest import post_json
from tests.console.test_console_browser import console_page, pytestmark  # noqa: F401 (skipped only without Chromium)


async def test_the_console_shows_the_callers_request_id(http_server, base_url, app):
    async with console_page(base_url) as page:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Where is it?"}]}
        response = await post_json(base_url, body, headers={"conversation-id": "conv-rid",
                                                            "X-Request-Id": "trace-browser-42"})
        assert response.code == 200 and response.headers["X-Request-Id"] == "trace-browser-42"
        card = page.locator('.conv[data-key="c:conv-rid"] .req[data-status="done"]')
        await card.wait_for()
        meta = await card.locator(".req-meta").text_content()
        assert "trace-browser-42" in meta
        assert not page.problems, page.problems
