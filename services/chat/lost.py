"""The requests a dead worker had open: counted and closed by the worker that took its place.

The supervisor reads the dead worker's last heartbeat (services/ops/heartbeat) and hands what it
named to the next worker of that slot, which calls close_lost() once it has started: each request
is counted with the outcome `lost` and, in the console (shared through Redis: a worker's own
in-memory console died with it), gets its end event, so it no longer shows as streaming.
"""

from __future__ import annotations

import logging
import time

from services.chat.exchange import Outcome, Publisher
from services.chat.inflight import Inflight
from services.ops.heartbeat import Lost
from services.ops.metrics import Metrics

log = logging.getLogger("iss_llm.chat")

ROUTES = frozenset(("/chat/completions", "/v1/chat/completions"))


def close_lost(lost: Lost, hub: Publisher, metrics: Metrics, inflight: Inflight) -> None:
    """Count `lost`'s requests (outcome lost) and publish each one's end event."""
    if not lost.count:
        return
    log.warning("%d request(s) were open in worker pid %d when it died: counted as lost and closed in the console",
                lost.count, lost.pid)
    now = time.time()
    for request_id, route in lost.requests:
        metrics.lost(route if route in ROUTES else "other")
        hub.publish({"type": Outcome.LOST.value, "id": request_id, "t": now, "outcome": Outcome.LOST.value,
                     "status": None, "worker_pid": lost.pid,
                     "message": f"the worker serving it (pid {lost.pid}) died"})
    unnamed = lost.count - len(lost.requests)
    if unnamed > 0:  # past what one beat names
        metrics.lost("other", unnamed)
    inflight.outcomes[Outcome.LOST.value] = inflight.outcomes.get(Outcome.LOST.value, 0) + lost.count
