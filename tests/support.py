"""Helpers the process tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import psutil

from services.ops.supervisor import sigterm_pending


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
    except psutil.NoSuchProcess:
        return True
    return sigterm_pending(pid) or not psutil.pid_exists(pid)


class TrackerOverride:
    """The real tracker, with what a subclass defines put in place of the real methods."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
