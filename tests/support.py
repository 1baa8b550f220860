"""Helpers the process tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psutil


def connection_owner(writer: asyncio.StreamWriter, pids: set[int]) -> int:
    """Which of these processes holds the server side of this client connection (0: none), from the
    kernel's table of their sockets."""
    local_port = writer.get_extra_info("sockname")[1]
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local_port:
                return pid
    return 0


def sigterm_reached(pid: int) -> bool:
    """A SIGTERM sent to this process is pending in it (blocked, or the process is frozen), or it has
    already ended it."""
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        status = Path(f"/proc/{pid}/status").read_text()
    except (psutil.NoSuchProcess, FileNotFoundError):
        return True
    pending = [int(line.split(":")[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in pending)


class TrackerOverride:
    """The real tracker, with what a subclass defines put in place of the real methods."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
