""".env: the working directory's, else the one beside server.py; the start-up line says which was read."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from config import load_settings
from tests.conftest import ROOT


def test_the_working_directorys_env_wins_over_the_one_beside_server_py(tmp_path, monkeypatch):
    work, install = tmp_path / "work", tmp_path / "install"
    work.mkdir()
    install.mkdir()
    (install / ".env").write_text("LLM_MODEL=from-beside\n")
    monkeypatch.chdir(work)
    settings = load_settings([], environ={}, beside=install)
    assert settings.llm_model == "from-beside" and settings.env_file == install / ".env"
    (work / ".env").write_text("LLM_MODEL=from-cwd\n")
    settings = load_settings([], environ={}, beside=install)
    assert settings.llm_model == "from-cwd" and settings.env_file == work / ".env"
    assert load_settings([], environ={"LLM_MODEL": "env"}, beside=install).llm_model == "env"


def test_none_found_is_said(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings([], environ={}, beside=tmp_path / "nowhere")
    assert settings.env_file is None and settings.llm_model is None
    assert load_settings([], environ={}, env_file=None, beside=tmp_path).env_file is None


def _installed_copy(where: Path) -> Path:
    """The project as an install beside its own .env: server.py a real file (its folder is what it
    looks beside), everything else linked to this checkout."""
    where.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in {"server.py", ".env", ".git", ".venv"}:
            continue
        (where / entry.name).symlink_to(entry)
    shutil.copy(ROOT / "server.py", where / "server.py")
    return where


async def _startup_lines(script: Path, cwd: Path, tmp_path: Path) -> str:
    """Start server.py from `cwd` and return what it printed up to its listening line (then stop it)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", "ISS_SOURCES": "tle",
           "ISS_CACHE_DIR": str(tmp_path / "cache"), "TLE_URL": "http://127.0.0.1:9/unreachable",
           "CONSOLE_ENABLED": "false"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--port", "0", cwd=str(cwd), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []
    try:
        async def until_listening() -> None:
            assert process.stdout is not None
            async for raw in process.stdout:
                lines.append(raw.decode(errors="replace"))
                if "listening on" in lines[-1]:
                    return

        await asyncio.wait_for(until_listening(), 60)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    return "".join(lines)


async def test_server_py_started_from_elsewhere_reads_the_env_beside_it(tmp_path):
    install = _installed_copy(tmp_path / "install")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    printed = await _startup_lines(install / "server.py", elsewhere, tmp_path)
    assert "no .env file read" in printed and str(elsewhere / ".env") in printed, printed
    assert "builtin offline responder" in printed

    (install / ".env").write_text("LLM_BACKEND=openai\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\n")
    printed = await _startup_lines(install / "server.py", elsewhere, tmp_path)
    assert f"settings: read {install / '.env'}" in printed, printed
    assert "openai at 127.0.0.1:9, because LLM_BACKEND=openai" in printed, "its settings were used"

    (elsewhere / ".env").write_text("LLM_BACKEND=builtin\n")
    printed = await _startup_lines(install / "server.py", elsewhere, tmp_path)
    assert f"settings: read {elsewhere / '.env'}" in printed and "builtin offline responder" in printed
