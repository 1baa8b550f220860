"""The browser tests fail, never skip, where Chromium is installed but does not start.

A skip there would leave the console's XSS checks unrun with nothing but a skip count to say so.
"""

from __future__ import annotations

import asyncio
import os
import sys

from tests.conftest import ROOT


async def test_an_installed_chromium_that_does_not_start_fails_the_browser_tests(tmp_path):
    # A `chromium` first on PATH that exits at once, as a broken install would; CI unset, so only
    # "installed" can make the browser tests run.
    broken = tmp_path / "bin" / "chromium"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'chromium: cannot start' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {name: value for name, value in os.environ.items() if name != "CI"}
    env["PATH"] = f"{broken.parent}{os.pathsep}{env.get('PATH', '')}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
        "tests/console/test_console_browser.py::test_a_long_open_page_keeps_only_recent_requests",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    report = out.decode(errors="replace")
    summary = report.strip().splitlines()[-1]
    assert process.returncode == 1, report
    assert "1 failed" in summary and "skipped" not in summary, report
    assert f"Chromium ({broken}) is installed but did not start" in report, report
