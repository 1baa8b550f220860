"""Helpers the process tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio

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
