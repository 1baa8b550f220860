"""Times the chat path's first token from its own process (so the soak's busy process cannot slow the
figures down): one clean streamed request after another, each timed from the moment the fake upstream
wrote its first content chunk (`x_sent`, time.monotonic(), one clock for every process on the
machine) to the moment it arrived here. That is what the server added, however late the fake
upstream itself (in the soak's process) is.

    python -m bench.chatprobe http://127.0.0.1:PORT --every 0.1 --seconds 120

Stops on SIGTERM or after --seconds, then prints one JSON line: the samples (s) and the failures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import sys
import time
from urllib.parse import urlsplit

_STAMPED = re.compile(rb'"content":"(?:[^"\\]|\\.).*?"x_sent":([0-9.]+)')
BODY = json.dumps({
    "model": "soak-model", "stream": True,
    "messages": [{"role": "user", "content": "Where is the station now?"}],
    "x_fake": {"tokens": 3, "gap": 0.0, "first_token_delay": 0.0, "stamp": True},
}).encode()


def first_token_added(connection: http.client.HTTPConnection) -> float | None:
    """One request: the seconds from the upstream's first content chunk to its arrival here, or None."""
    connection.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        response.read()
        return None
    seen = b""
    added = None
    while chunk := response.read1(65536):
        now = time.monotonic()
        seen += chunk
        if added is None and (match := _STAMPED.search(seen)):
            added = now - float(match[1])
    return added


def probe(url: str, every: float, seconds: float) -> dict[str, object]:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    parts = urlsplit(url)
    samples: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        started = time.monotonic()
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
        try:
            added = first_token_added(connection)
            if added is None:
                failures += 1
            else:
                samples.append(round(added, 4))
        except (OSError, http.client.HTTPException):
            failures += 1
        finally:
            connection.close()
        time.sleep(max(0.0, every - (time.monotonic() - started)))  # pacing, not waiting for anything
    return {"samples": samples, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--every", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    print(json.dumps(probe(args.url, args.every, args.seconds)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
