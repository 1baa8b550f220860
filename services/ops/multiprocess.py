"""The metrics' multiprocess lifecycle, in the parent process: the directory the workers write to.

prometheus_client picks its mode when it is first imported, from PROMETHEUS_MULTIPROC_DIR (the
documented way): `prepare()` sets that variable, so it must run before anything imports the client
(server.py calls it before it imports the app). This module imports the client only once the
variable is set.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(path: str | os.PathLike[str] | None = None) -> Path:
    """In the parent, before the workers fork and before prometheus_client is imported: an empty
    directory, named in PROMETHEUS_MULTIPROC_DIR.

    `path` defaults to $PROMETHEUS_MULTIPROC_DIR, else a new temporary directory. Files left by an
    earlier run are removed (their counters would be added to this run's)."""
    if "prometheus_client" in sys.modules and os.environ.get(ENV) is None:
        raise RuntimeError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set, so it runs in "
            "single-process mode: call services.ops.multiprocess.prepare() before importing the metrics"
        )
    chosen = Path(path or os.environ.get(ENV) or tempfile.mkdtemp(prefix="iss-llm-metrics-"))
    chosen.mkdir(parents=True, exist_ok=True)
    for entry in chosen.glob("*.db"):
        entry.unlink(missing_ok=True)
    os.environ[ENV] = str(chosen)
    return chosen


def worker_exited(pid: int) -> None:
    """In the parent, when a worker exits: its live gauges (in flight, console sockets) stop counting."""
    path = os.environ.get(ENV)
    if path:
        from prometheus_client import multiprocess  # the variable is set: the client is in its multiprocess mode

        multiprocess.mark_process_dead(pid, path)


def cleanup(path: str | os.PathLike[str]) -> None:
    """In the parent, at exit: remove a directory prepare() created."""
    shutil.rmtree(path, ignore_errors=True)
