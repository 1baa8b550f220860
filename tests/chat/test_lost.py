"""count_lost and publish_lost: a dead worker's open requests counted once each (lost), closed in the console."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from services.chat.inflight import Inflight
from services.chat.lost import count_lost, publish_lost
from services.console import MemoryHub
from services.ops.heartbeat import Lost
from services.ops.metrics import Metrics


def _lost_by_route(metrics: Metrics) -> dict[str, float]:
    body, _ = metrics.exposition(None)
    return {sample.labels["route"]: sample.value for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "iss_llm_chat_requests_total" and sample.labels["outcome"] == "lost"}


def test_lost_requests_are_counted_by_route_and_closed_in_the_console():
    hub, metrics, inflight = MemoryHub(10), Metrics(), Inflight()
    hub.publish({"type": "request", "id": "req_a", "t": 1.0})
    hub.publish({"type": "tokens", "id": "req_a", "t": 1.1, "text": "The station"})
    lost = Lost(4242, 5, (("req_a", "/v1/chat/completions"), ("req_b", "/chat/completions"), ("req_c", "/x\n{}")))
    count_lost(lost, metrics, inflight)
    publish_lost(lost, hub)
    hub.drain()
    # Two past what the beat named count as well; a route that is none of the chat routes is "other".
    assert _lost_by_route(metrics) == {"/v1/chat/completions": 1.0, "/chat/completions": 1.0, "other": 3.0}
    [record] = hub.snapshot()  # only the request this console had: the others are not made up
    assert record["id"] == "req_a" and record["status"] == "lost" and record["outcome"]["worker_pid"] == 4242
    assert inflight.outcomes["lost"] == 5
    count_lost(Lost(1, 0), metrics, inflight)  # nothing open: nothing counted
    assert inflight.outcomes["lost"] == 5
