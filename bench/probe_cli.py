"""The command line of a probe child (bench.healthprobe, bench.chatprobe): a URL, `--every` and `--seconds`;
prints the probe's result as one JSON line. Standard library only: a probe starts fast and stays light."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from typing import Any


def stop_on_sigterm() -> Callable[[], bool]:
    """From now on SIGTERM ends the probe's loop: the returned function says whether it came."""
    came = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal came
        came = True

    signal.signal(signal.SIGTERM, on_term)
    return lambda: came


def probe_main(probe: Callable[[str, float, float], dict[str, Any]], doc: str, every: float) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("url")
    parser.add_argument("--every", type=float, default=every)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    print(json.dumps(probe(args.url, args.every, args.seconds)), flush=True)
    sys.exit(0)
