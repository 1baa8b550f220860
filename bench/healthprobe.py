"""Polls GET /healthz from its own process (so the soak's busy process cannot slow the figures down).

    python -m bench.healthprobe http://127.0.0.1:PORT --every 0.25 --seconds 120

Stops on SIGTERM or after --seconds, then prints one JSON line: checks, failures, slowest (s).
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from bench.probe_cli import probe_main, stop_on_sigterm


def probe(url: str, every: float, seconds: float) -> dict[str, float]:
    """Ping /healthz every `every` seconds for at most `seconds`, or until SIGTERM."""
    stopped = stop_on_sigterm()
    parts = urlsplit(url)
    checks = failures = 0
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while not stopped() and time.monotonic() < deadline:
        started = time.monotonic()
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures += 1
        except (OSError, http.client.HTTPException):
            failures += 1
        finally:
            connection.close()
        checks += 1
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(max(0.0, every - (time.monotonic() - started)))
    return {"checks": checks, "failures": failures, "slowest": round(slowest, 3)}


def main() -> None:
    probe_main(probe, __doc__ or "", 0.25)


if __name__ == "__main__":
    main()
