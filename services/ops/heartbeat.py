"""A worker's heartbeat to its supervisor: one small file its event loop rewrites every beat.

gunicorn's worker timeout, by a file's mtime: the worker's loop writes the file every `interval`
seconds, so the beats stop when the loop is stuck (a blocking call, an endless computation, a
SIGSTOP), whatever threads still run. The supervisor kills a worker whose file has not changed for
WORKER_TIMEOUT seconds and replaces it.

Each beat also says which requests the worker has open (their console ids and routes, at most
MAX_LISTED): when a worker dies, the supervisor reads its last beat and hands those requests to
the worker that replaces it, which counts them (outcome `lost`) and closes them in the console.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger("iss_llm.workers")

MAX_LISTED = 1000  # open requests named in one beat (each id is the server's own: ~28 characters)
MAX_BEAT_BYTES = 256 * 1024  # what the supervisor reads of a beat, at most

OpenRequest = tuple[str, str]  # (the console's id of the request, its route)


@dataclass(frozen=True)
class Lost:
    """The requests a dead worker had open at its last beat: `count` in all, `requests` named."""

    pid: int
    count: int
    requests: tuple[OpenRequest, ...] = ()


@dataclass
class Heartbeat:
    """The worker's side: `beat()` from its event loop; `inherited` is what its predecessor left open."""

    path: Path
    interval: float
    inherited: Lost | None = None
    _last: bytes = field(default=b"", repr=False)

    def beat(self, open_requests: Sequence[OpenRequest] = (), count: int | None = None) -> None:
        """Say "alive" (a new mtime), with the requests open now. Never raises: a full disk must not
        stop a worker, the supervisor then kills it as silent, which is the truth as far as it knows."""
        listed = [list(item) for item in open_requests[:MAX_LISTED]]
        body = orjson.dumps({"pid": os.getpid(), "open": len(open_requests) if count is None else count,
                             "requests": listed})
        try:
            if body == self._last:
                os.utime(self.path)
            else:
                # Written aside and renamed: the supervisor never reads half a beat, even of a worker
                # killed in the middle of writing one.
                spare = self.path.with_suffix(".tmp")
                spare.write_bytes(body)
                spare.replace(self.path)
                self._last = body
        except OSError as exc:
            log.warning("heartbeat not written (%s): the supervisor may take this worker for stuck", exc.strerror)


def read_beat(path: Path, pid: int) -> Lost:
    """What the last beat at `path` said was open (nothing, if there is no beat or it is not valid)."""
    try:
        with path.open("rb") as file:
            data = orjson.loads(file.read(MAX_BEAT_BYTES))
    except (OSError, orjson.JSONDecodeError):
        return Lost(pid, 0)
    if not isinstance(data, dict):
        return Lost(pid, 0)
    listed = data.get("requests")
    requests = tuple(
        (item[0][:128], item[1][:64]) for item in (listed if isinstance(listed, list) else [])[:MAX_LISTED]
        if isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)
    )
    count = data.get("open")
    count = count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else len(requests)
    return Lost(pid, max(count, len(requests)), requests)


def beat_interval(timeout: float | None) -> float:
    """How often a worker beats: every second, or four times per timeout when that is shorter."""
    return 1.0 if timeout is None else max(0.05, min(1.0, timeout / 4))
