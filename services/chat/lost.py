"""The requests a dead worker had open: counted and closed by the worker that took its place.

The supervisor reads the dead worker's last heartbeat (services/ops/heartbeat) and hands what it
named to the next worker of that slot, which counts each request with the outcome `lost` at once
(count_lost) and, once its link to the cluster feed is up, gives each its end event in the console
(publish_lost; shared through Redis: a worker's own in-memory console died with it), so it no longer
shows as streaming.
"""

from __future__ import annotations

import logging
import time

from services.chat.endings import Outcome
from services.chat.exchange import Publisher
from services.chat.inflight import Inflight
from services.ops.heartbeat import Lost
from services.ops.recorder import Recorder

log = logging.getLogger("iss_llm.chat")

ROUTES = frozenset(("/chat/completions", "/v1/chat/completions"))


def count_lost(lost: Lost, metrics: Recorder, inflight: Inflight) -> None:
    """Count `lost`'s requests: outcome lost, by route (a route that is none of the chat routes: other)."""
    if not lost.count:
        return
    log.warning("%d request(s) were open in worker pid %d when it died: counted as lost", lost.count, lost.pid)
    for _, route in lost.requests:
        metrics.lost(route if route in ROUTES else "other")
    unnamed = lost.count - len(lost.requests)
    if unnamed > 0:  # past what one beat names
        metrics.lost("other", unnamed)
    inflight.outcomes[Outcome.LOST.value] = inflight.outcomes.get(Outcome.LOST.value, 0) + lost.count


def publish_lost(lost: Lost, hub: Publisher) -> None:
    """Each named request's end event, `lost`: the console closes the records it has of them."""
    now = time.time()
    for request_id, _ in lost.requests:
        hub.publish({"type": Outcome.LOST.value, "id": request_id, "t": now, "outcome": Outcome.LOST.value,
                     "status": None, "worker_pid": lost.pid,
                     "message": f"the worker serving it (pid {lost.pid}) died"})
