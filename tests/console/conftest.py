"""The console tests' own marker: a longer time limit for the few that drive a real server hard."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): this async test's time limit (pytest-tornasync)")
