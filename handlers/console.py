"""Placeholder: the console feature's handlers land here."""

from __future__ import annotations

from typing import Any


def routes(services: Any) -> list[tuple]:
    return []
