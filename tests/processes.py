"""Stopping a real server a test started (redis-server, nginx): SIGTERM, then SIGKILL if it lingers."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
