"""Times the chat path's first token from its own process (so the soak's busy process cannot slow the
figures down): one clean streamed request after another (the fake model answers at once), each timed
from sending to its first content token. Also, for each, the relay part alone: from the moment the
fake upstream wrote that chunk (`x_sent`, time.monotonic(), one clock for every process on the
machine) to its arrival here.

    python -m bench.chatprobe http://127.0.0.1:PORT --every 0.1 --seconds 120

Stops on SIGTERM or after --seconds, then prints one JSON line: the samples (s), the relay parts (s)
and the failures.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from urllib.parse import urlsplit

from bench.probe_cli import probe_main, stop_on_sigterm

_STAMPED = re.compile(rb'"content":"(?:[^"\\]|\\.).*?"x_sent":([0-9.]+)')
BODY = json.dumps({
    "model": "soak-model", "stream": True,
    "messages": [{"role": "user", "content": "Where is the station now?"}],
    "x_fake": {"tokens": 3, "gap": 0.0, "first_token_delay": 0.0, "stamp": True},
}).encode()


def first_token(connection: http.client.HTTPConnection) -> tuple[float, float] | None:
    """One request: (seconds from sending to the first content token, from the upstream's writing that
    token to its arrival here), or None."""
    sent = time.monotonic()
    connection.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        response.read()
        return None
    seen = b""
    timed = None
    while chunk := response.read1(65536):
        now = time.monotonic()
        seen += chunk
        if timed is None and (match := _STAMPED.search(seen)):
            timed = (now - sent, now - float(match[1]))
    return timed


def probe(url: str, every: float, seconds: float) -> dict[str, object]:
    stopped = stop_on_sigterm()
    parts = urlsplit(url)
    samples: list[float] = []
    relay: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while not stopped() and time.monotonic() < deadline:
        started = time.monotonic()
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
        try:
            timed = first_token(connection)
            if timed is None:
                failures += 1
            else:
                samples.append(round(timed[0], 4))
                relay.append(round(timed[1], 4))
        except (OSError, http.client.HTTPException):
            failures += 1
        finally:
            connection.close()
        time.sleep(max(0.0, every - (time.monotonic() - started)))  # pacing, not waiting for anything
    return {"samples": samples, "relay": relay, "failures": failures}


def main() -> None:
    probe_main(probe, __doc__ or "", 0.1)


if __name__ == "__main__":
    main()
