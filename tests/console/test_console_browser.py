"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from app import build_services, make_app
from services.iss.state import IssState
from tests.conftest import open_stream, post_json
from tests.console.test_console import TOKEN
from tests.fakes.openai_upstream import WORDS
from tests.support import TrackerOverride

# Debian's chromium, which the README's test command (scripts/test.sh) installs when `chromium` is not
# on PATH; never playwright's own download.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]
XSS = "<img src=x onerror=alert(1)>"
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or "/tmp/iss-llm-artifacts")
WAIT_MS = 10_000

# Wherever Chromium is installed (scripts/test.sh has run) or in CI, these run, and a Chromium that
# does not start fails them. Only a machine without Chromium skips them, and the reason is printed
# in the run's summary (pytest.ini asks for -rs): the console's XSS checks did not run there.
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="NOT CHECKED: the console in a browser (XSS included): no chromium on PATH or at /usr/bin/chromium; "
           "bash scripts/test.sh installs it",
)


# Text a model can be steered into writing (prompt injection), and place names as a future ISS
# source could send them: all of it must reach the page as text, and none of it run.
HOSTILE_WORDS = ["Sure! ", "<img src=x onerror=window.__pwned='answer'>", " then ",
                 "<script>window.__pwned='script'</script>", " <svg onload=window.__pwned='svg'></svg>",
                 " & <b>bold</b> &amp; done"]
HOSTILE_OVER = "<img src=x onerror=window.__pwned='over'>"
HOSTILE_CITY = "<b>Atlantis</b><script>window.__pwned='city'</script>"


class HostileIss(TrackerOverride):
    """The real tracker, but the places it names are HTML."""

    async def current(self) -> IssState | None:
        state = await self.real.current()
        if state is None:
            return None
        return dataclasses.replace(state, over=HOSTILE_OVER, over_water=False, nearest_city=HOSTILE_CITY,
                                   nearest_city_km=10.0)


@pytest.fixture
def hostile_iss() -> bool:
    return False


@pytest.fixture
def app(settings, io_loop, hostile_iss):
    services = build_services(settings)
    if hostile_iss:
        services.tracker = HostileIss(services.tracker)
    application = make_app(settings, services)
    yield application
    io_loop.run_sync(application.services.close)


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go: outside the repository."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@contextlib.asynccontextmanager
async def console_page(base_url: str) -> AsyncIterator:
    """A fresh browser on the console page, opened the way a person does: the printed URL."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # installed but broken is a failure, never a skip
            pytest.fail(f"Chromium ({CHROMIUM}) is installed but did not start: {str(exc)[:1500]}")
        context = await browser.new_context(viewport={"width": 1440, "height": 1000})
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.problems = []  # type: ignore[attr-defined]
        page.on("dialog", lambda dialog: page.problems.append(f"dialog: {dialog.message}"))
        page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
        await page.goto(f"{base_url}/console?token={TOKEN}")
        await page.wait_for_selector(".pill-ok")
        try:
            yield page
        finally:
            await browser.close()


def _streamed_text(body: bytes) -> str:
    text = ""
    for line in body.decode().splitlines():
        if line.startswith("data: {"):
            chunk = orjson.loads(line[6:])
            for choice in chunk.get("choices") or ():
                text += choice["delta"].get("content") or ""
    return text


async def test_console_shows_a_streaming_request_as_text_in_a_real_browser(http_server, base_url, app, artifacts):
    async with console_page(base_url) as page:
        assert page.url == f"{base_url}/console", "the token leaves the address bar"
        assert await page.evaluate("document.cookie") == "", "the session cookie is HttpOnly"

        body = {
            "model": "nova-iss", "stream": True, "temperature": 0.4, "user": "<b>not bold</b>",
            "messages": [
                {"role": "system", "content": "You are Nova. " * 40},
                {"role": "user", "content": XSS},
            ],
            "x_fake": {"tokens": 60, "gap": 0.03},
        }
        chat = asyncio.ensure_future(post_json(
            base_url, body, headers={"conversation-id": "conv-browser", "Authorization": "Bearer caller-secret"}
        ))
        card = page.locator('.conv[data-key="c:conv-browser"] .req').first
        output = card.locator("pre.output")
        # The text grows while the request is still streaming...
        await page.wait_for_function(
            """() => { const o = document.querySelector('.conv[data-key="c:conv-browser"] pre.output');
                       return o && o.textContent.length > 0 && o.classList.contains('streaming'); }"""
        )
        assert await card.get_attribute("data-status") == "streaming"
        response = await chat
        assert response.code == 200
        # ...and ends as exactly what the caller received, with its timings.
        await page.wait_for_selector('.conv[data-key="c:conv-browser"] .req[data-status="done"]')
        answer = _streamed_text(response.body)
        assert answer == "".join(WORDS[i % len(WORDS)] for i in range(60))
        assert await output.text_content() == answer
        outcome = await card.locator(".outcome").text_content()
        assert "TTFT" in outcome and "tokens/s" in outcome and "stop" in outcome

        # Everything from the request is text, never HTML.
        user = card.locator(".msg.role-user .content")
        assert await user.text_content() == XSS
        assert await page.locator("#feed img").count() == 0
        assert await page.locator("#feed b", has_text="not bold").count() == 0
        assert "<b>not bold</b>" in await card.locator(".params").text_content()
        # The long system prompt is folded, and opens on demand.
        fold = card.locator(".msg.role-system details.fold")
        assert await fold.get_attribute("open") is None
        await fold.locator("summary").click()
        assert await fold.get_attribute("open") == ""
        # The ISS block that was added, and the station on the map.
        assert "[ISS live data]" in await card.locator(".iss-block").text_content()
        await page.wait_for_selector(".iss-marker:not(.hidden)", state="attached")
        # The ground track ahead comes from /iss?track=, drawn as a path on the map.
        await page.wait_for_function("() => document.querySelector('.track-ahead').getAttribute('d').length > 100")
        assert "from /iss" in await page.locator("#iss-note").text_content()
        assert "caller-secret" not in await page.content()

        await page.screenshot(path=str(artifacts / "console.png"))
        await page.screenshot(path=str(artifacts / "console-full.png"), full_page=True)
        assert not page.problems, page.problems


@pytest.mark.parametrize("hostile_iss", [True])
async def test_html_in_model_output_and_iss_data_shows_as_text_and_never_runs(
    hostile_iss, http_server, base_url, app, upstream
):
    async with console_page(base_url) as page:
        body = {"model": "nova-iss", "stream": True, "messages": [{"role": "user", "content": "Where is it?"}],
                "x_fake": {"words": HOSTILE_WORDS, "gap": 0.02}}
        response = await post_json(base_url, body, headers={"conversation-id": "conv-hostile"})
        assert response.code == 200
        answer = _streamed_text(response.body)
        assert answer == "".join(HOSTILE_WORDS)
        card = page.locator('.conv[data-key="c:conv-hostile"] .req[data-status="done"]')
        await card.wait_for()
        # The streamed answer, token by token, is exactly the text the caller got.
        assert await card.locator("pre.output").text_content() == answer
        # The ISS block the upstream received, shown as it was sent.
        sent = upstream.bodies[-1]["messages"][-1]["content"]
        block = re.search(r"\[ISS live data\].*?\[/ISS live data\]", sent, re.S)[0]
        assert HOSTILE_OVER in block and HOSTILE_CITY in block
        assert await card.locator(".iss-block .content").text_content() == block
        # The station panel, from the same state.
        await page.wait_for_function("() => document.querySelector('#iss-info').textContent.includes('Atlantis')")
        info = await page.locator("#iss-info").text_content()
        assert HOSTILE_OVER in info and HOSTILE_CITY in info
        # No element came from the data, and nothing in it ran: a probe image that fails now (JSON
        # is no image) reports after any injected one (same server, asked earlier) ran its onerror.
        assert await page.locator(":is(#feed, #iss-info) :is(img, script, svg)").count() == 0
        assert await page.locator(":is(#feed, #iss-info) b", has_text=re.compile("bold|Atlantis")).count() == 0
        pwned = await page.evaluate(
            """() => new Promise(done => { const probe = new Image();
                 probe.onerror = () => done(window.__pwned === undefined ? null : String(window.__pwned));
                 probe.src = '/healthz?probe'; })"""
        )
        assert pwned is None, f"script from the data ran: {pwned}"
        assert not page.problems, page.problems


async def test_a_speculative_burst_reads_as_one_turn_and_survives_a_reload(http_server, base_url, app, artifacts):
    async with console_page(base_url) as page:
        turn = {"model": "nova-iss", "stream": True, "x_fake": {"tokens": 200, "gap": 0.02}}
        partials = ["Cool. So where", "Cool. So where is it", "Cool. So where is it right now?"]

        def body(text: str, tokens: int = 200) -> dict:
            return {**turn, "messages": [{"role": "user", "content": text}], "x_fake": {"tokens": tokens, "gap": 0.01}}

        # Each partial transcript is abandoned once the next one is under way, as Tavus does.
        first = await open_stream(base_url, body(partials[0]), headers={"conversation-id": "conv-burst"}, events=2)
        second = await open_stream(base_url, body(partials[1]), headers={"conversation-id": "conv-burst"}, events=2)
        first[1].close()
        final = asyncio.ensure_future(
            post_json(base_url, body(partials[2], tokens=8), headers={"conversation-id": "conv-burst"})
        )
        second[1].close()
        assert (await final).code == 200

        section = page.locator('.conv[data-key="c:conv-burst"]')
        await page.wait_for_function(
            """() => document.querySelectorAll('.conv[data-key="c:conv-burst"] .req[data-status="cancelled"]')
                      .length === 2"""
        )
        await section.locator('.req[data-status="done"]').wait_for()
        assert await section.locator(".turn").count() == 1
        assert "speculative burst of 3 requests, 2 abandoned" in await section.locator(".turn-head").text_content()
        assert "abandoned at" in await section.locator('.req[data-status="cancelled"] .sum-right').first.text_content()

        await page.screenshot(path=str(artifacts / "console-burst.png"))
        # A reload replays the buffer: the same turn, the same outcomes.
        await page.reload()
        await page.wait_for_selector(".pill-ok")
        await section.locator('.req[data-status="done"]').wait_for()
        assert await section.locator(".turn").count() == 1
        assert await section.locator('.req[data-status="cancelled"]').count() == 2

        # Filter by conversation.
        await post_json(base_url, body("other", tokens=3), headers={"conversation-id": "conv-other"})
        other = page.locator('.conv[data-key="c:conv-other"]')
        await other.wait_for()
        await page.select_option("#filter", "c:conv-burst")
        assert await other.is_hidden() and await section.is_visible()
        await page.select_option("#filter", "")
        assert await other.is_visible()
        assert not page.problems, page.problems


async def test_pause_clear_and_copy_as_curl(http_server, base_url, app):
    async with console_page(base_url) as page:
        ask = {"model": "nova-iss", "stream": True, "messages": [{"role": "user", "content": "it's \"quoted\""}],
               "x_fake": {"tokens": 4}}

        # Paused: events are held, not shown; resuming shows them.
        await page.click("#pause")
        await post_json(base_url, ask, headers={"conversation-id": "conv-pause"})
        await page.wait_for_function("() => /held/.test(document.querySelector('#pause').textContent)")
        assert await page.locator('.conv[data-key="c:conv-pause"]').count() == 0
        await page.click("#pause")
        card = page.locator('.conv[data-key="c:conv-pause"] .req[data-status="done"]')
        await card.wait_for()

        # Copy as curl: a command that replays the request, with a placeholder for the key.
        await card.locator("button", has_text="Copy as curl").click()
        await page.wait_for_selector(".toast.show")
        command = await page.evaluate("navigator.clipboard.readText()")
        assert '"Authorization: Bearer $SERVER_API_KEY"' in command
        sent = orjson.loads(re.search(r"<<'ISS_LLM_REQUEST'\n(.*)\nISS_LLM_REQUEST", command, re.S).group(1))
        assert sent["messages"] == ask["messages"] and sent["stream"] is True
        if shutil.which("bash") and shutil.which("curl"):
            process = await asyncio.create_subprocess_exec(
                "bash", "-c", command, env={**os.environ, "SERVER_API_KEY": "placeholder"},
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(process.communicate(), 20)
            assert process.returncode == 0
            assert b"data: [DONE]" in out
            await page.wait_for_function(
                """() => document.querySelectorAll('.conv[data-key="c:conv-pause"] .req').length === 2"""
            )

        # Clear hides everything received so far, also across a reload of this tab.
        await page.click("#clear")
        assert await page.locator(".req").count() == 0
        await page.reload()
        await page.wait_for_selector(".pill-ok")
        await page.wait_for_selector("#notice:not([hidden])")
        assert await page.locator(".req").count() == 0
        await page.click("#notice-action")
        await page.locator('.conv[data-key="c:conv-pause"] .req').first.wait_for()
        assert not page.problems, page.problems


@pytest.mark.parametrize("overrides", [{"console_buffer": 3}])
async def test_a_long_open_page_keeps_only_recent_requests(overrides, http_server, base_url, app):
    async with console_page(base_url) as page:
        for index in range(10):
            await post_json(base_url, {"messages": [{"role": "user", "content": f"question {index}"}]},
                            headers={"conversation-id": "conv-many"})
        # The newest request is on the page; the page holds twice the server's buffer, no more.
        await page.wait_for_function(
            """() => Array.from(document.querySelectorAll('.req')).some(c => c.textContent.includes('question 9'))"""
        )
        cards = await page.locator(".req").count()
        assert cards == 6, cards
        assert await page.locator(".req", has_text="question 0").count() == 0
        assert not page.problems, page.problems


TOOL_XSS = "<img src=x onerror=window.__pwned='tool'>"


async def test_the_layers_tool_lines_show_on_a_page_opened_later_as_they_did_live(
    http_server, base_url, app, upstream
):
    upstream.scripted_tools = True
    question = [{"role": "user", "content": "When can I see the ISS from Paris?"}]
    # Before any page is open: only the replay on connect can show this request.
    response = await post_json(base_url, {"model": "m", "stream": True, "messages": question},
                               headers={"conversation-id": "conv-tool-before"})
    assert response.code == 200 and upstream.requests == 2  # the tool's round, then the answer's
    async with console_page(base_url) as page:
        card = page.locator('.conv[data-key="c:conv-tool-before"] .req[data-status="done"]')
        await card.wait_for()
        lines = card.locator("pre.output .tool-call")
        assert await lines.count() == 1
        line = await lines.first.text_content()
        assert line.startswith('[tool iss_passes({"place":"Paris"}) → {') and "Paris, France" in line, line
        # The call came before any text of the answer, and stays there.
        assert await card.locator("pre.output").text_content() == line + _streamed_text(response.body)

        # Live, with text a model can be steered into writing as the tool's argument: a line drawn as
        # it comes, and the very same one once the page is reloaded (replayed from the server's buffer).
        hostile = {"model": "m", "stream": True, "messages": question, "x_fake": {"place": TOOL_XSS}}
        assert (await post_json(base_url, hostile, headers={"conversation-id": "conv-tool-live"})).code == 200
        output = page.locator('.conv[data-key="c:conv-tool-live"] .req[data-status="done"] pre.output')
        await output.wait_for()
        assert TOOL_XSS in await output.locator(".tool-call").text_content()
        drawn_live = await output.inner_html()
        await page.reload()
        await page.wait_for_selector(".pill-ok")
        await output.wait_for()
        assert await output.inner_html() == drawn_live
        assert await page.locator('.conv[data-key="c:conv-tool-before"] pre.output .tool-call').count() == 1

        # A call in the middle of an answer (a model that speaks, then looks something up) is drawn
        # where it came, live and replayed alike.
        hub, now = app.services.hub, time.time()
        hub.publish({"type": "request", "id": "req_mid", "t": now, "conversation_id": "conv-tool-mid",
                     "messages": [{"role": "user", "content": "and who is aboard?"}], "params": {}})
        hub.publish({"type": "tokens", "id": "req_mid", "t": now, "text": "Let me check. "})
        hub.publish({"type": "iss_tool", "id": "req_mid", "t": now, "name": "iss_crew", "arguments": "{}",
                     "result": '{"known": true}', "ok": True, "ms": 0.2, "round": 1})
        hub.publish({"type": "tokens", "id": "req_mid", "t": now, "text": "Seven people."})
        hub.publish({"type": "done", "id": "req_mid", "t": now})
        mid = page.locator('.conv[data-key="c:conv-tool-mid"] .req[data-status="done"] pre.output')
        await mid.wait_for()
        drawn_live = await mid.inner_html()
        assert drawn_live == ('Let me check. <div class="tool-call">[tool iss_crew({}) → {"known": true} · 0.2 ms]'
                              "</div>Seven people.")
        await page.reload()
        await page.wait_for_selector(".pill-ok")
        await mid.wait_for()
        assert await mid.inner_html() == drawn_live

        # Text only: no element but the lines themselves, and nothing from the data ran.
        assert await page.locator("#feed pre.output *").count() == await page.locator("#feed .tool-call").count() == 3
        assert await page.locator("#feed :is(img, script, svg)").count() == 0
        pwned = await page.evaluate(
            """() => new Promise(done => { const probe = new Image();
                 probe.onerror = () => done(window.__pwned === undefined ? null : String(window.__pwned));
                 probe.src = '/healthz?probe'; })"""
        )
        assert pwned is None, f"script from a tool line ran: {pwned}"
        assert not page.problems, page.problems
