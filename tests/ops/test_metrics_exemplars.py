"""OpenMetrics exemplars: a chat request's ids on the buckets its timings fell in, read back from
/metrics by the client's own OpenMetrics parser, and never an error when the ids are long."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.samples import Sample
from tornado.httpclient import AsyncHTTPClient

from services.ops.exemplars import MAX_EXEMPLAR_CHARS, exemplar_labels
from tests.conftest import post_json, sse_events
from tests.ops.test_metrics import until

ROUTE = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


async def openmetrics_samples(base_url: str) -> list[Sample]:
    response = await AsyncHTTPClient().fetch(base_url + "/metrics", headers=OPENMETRICS)
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    return [sample for family in openmetrics_families(response.body.decode()) for sample in family.samples]


def with_exemplars(samples: list[Sample], name: str) -> list[Sample]:
    return [sample for sample in samples if sample.name == name and sample.exemplar is not None]


def one(samples: list[Sample], name: str, **labels: str) -> float:
    [value] = [s.value for s in samples if s.name == name and s.labels == labels]
    return value


async def _counted(base_url: str, outcome: str = "done", count: float = 1.0) -> list[Sample] | None:
    """An OpenMetrics scrape, once `count` requests ended with this outcome (counted as the answer ends)."""
    samples = await openmetrics_samples(base_url)
    ended = [s for s in samples if s.name == "iss_llm_chat_requests_total" and s.labels.get("outcome") == outcome]
    return samples if ended and ended[0].value == count else None


async def test_a_tavus_stream_leaves_its_request_and_conversation_ids_on_the_ttft_bucket(base_url, client):
    # Tavus names the conversation in a header; the request id is the server's own, sent back to the caller.
    conversation = "c7f3a9d2e1b4"
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-test", messages=MESSAGES, stream=True, extra_headers={"conversation-id": conversation},
    ) as response:
        request_id = response.headers["x-request-id"]
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in await response.parse()
                        if chunk.choices])
    assert text and request_id
    samples = await until(lambda: _counted(base_url))
    assert samples, "the request was never counted"
    ids = {"request_id": request_id, "conversation_id": conversation}
    [ttft] = with_exemplars(samples, "iss_llm_chat_ttft_seconds_bucket")
    assert ttft.exemplar.labels == ids
    # The exemplar is this request's own observation, on the bucket it fell in: the first bound above it.
    observed = one(samples, "iss_llm_chat_ttft_seconds_sum", route=ROUTE)
    assert ttft.exemplar.value == observed > 0
    bounds = sorted(float(s.labels["le"]) for s in samples
                    if s.name == "iss_llm_chat_ttft_seconds_bucket" and float(s.labels["le"]) >= observed)
    assert float(ttft.labels["le"]) == bounds[0]
    # The same ids on the request counter, the whole request's duration and the upstream's first token.
    [counted] = with_exemplars(samples, "iss_llm_chat_requests_total")
    assert counted.labels == {"route": ROUTE, "outcome": "done", "status": "200"} and counted.exemplar.labels == ids
    for name in ("iss_llm_chat_duration_seconds_bucket", "iss_llm_upstream_ttft_seconds_bucket"):
        [bucket] = with_exemplars(samples, name)
        assert bucket.exemplar.labels == ids, name
    # Only the OpenMetrics exposition carries them: the classic text format has no exemplars.
    classic = (await AsyncHTTPClient().fetch(base_url + "/metrics")).body.decode()
    assert request_id not in classic and conversation not in classic


async def test_over_long_ids_still_count_the_request_and_the_exemplar_fits(base_url, upstream):
    request_id = "r" * 128  # the longest X-Request-Id the server keeps
    conversation = "c" * 128  # and the longest conversation id
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    response = await post_json(base_url, body, headers={"X-Request-Id": request_id, "conversation-id": conversation})
    assert response.code == 200 and sse_events(response.body)[-1] == "[DONE]"
    assert response.headers["X-Request-Id"] == request_id
    samples = await until(lambda: _counted(base_url))
    assert samples, "the request was never counted"
    assert one(samples, "iss_llm_chat_ttft_seconds_count", route=ROUTE) == 1
    exemplars = [s.exemplar for s in samples if s.exemplar is not None]
    assert len(exemplars) == 4  # requests, duration, upstream and caller's first token
    for exemplar in exemplars:
        # The request id first, cut to what fits; no room is left for the conversation's.
        assert exemplar.labels == {"request_id": request_id[:MAX_EXEMPLAR_CHARS - len("request_id")]}
        assert sum(len(k) + len(v) for k, v in exemplar.labels.items()) == MAX_EXEMPLAR_CHARS


def test_exemplar_labels_keep_the_request_id_then_a_whole_trace_id_then_what_fits_of_the_conversation():
    def size(labels: dict[str, str]) -> int:
        return sum(len(k) + len(v) for k, v in labels.items())

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert exemplar_labels("req_1", "conv-1", trace) == {"request_id": "req_1", "trace_id": trace,
                                                         "conversation_id": "conv-1"}
    assert exemplar_labels("req_1", None, None) == {"request_id": "req_1"}
    # The conversation id is shortened to the room left...
    labels = exemplar_labels("r" * 40, "c" * 128, trace)
    assert labels["conversation_id"] == "c" * (128 - 10 - 40 - 8 - 32 - 15) and size(labels) == 128
    # ...and dropped when too little would be left of it (a whole short one is kept).
    assert "conversation_id" not in exemplar_labels("r" * 100, "c" * 20, None)
    assert exemplar_labels("r" * 100, "c3", None)["conversation_id"] == "c3"
    # A trace id that does not fit whole is left out, never cut.
    assert "trace_id" not in exemplar_labels("r" * 90, None, trace)
    for rid in (0, 1, 60, 117, 118, 119, 128):
        for conversation in (None, "", "c" * 1, "c" * 64, "c" * 128):
            for trace_id in (None, trace):
                labels = exemplar_labels("r" * rid, conversation, trace_id)
                assert size(labels) <= MAX_EXEMPLAR_CHARS and labels["request_id"] == ("r" * rid)[:118]


async def test_a_slow_request_gets_its_own_exemplar_even_right_after_a_fast_one(base_url, upstream):
    # One exemplar per bucket a second: a slow outlier, in a bucket of its own, is never skipped.
    for request_id, delay in (("fast-1", 0.0), ("slow-2", 0.45)):
        body = {"model": "m", "messages": MESSAGES, "stream": True,
                "x_fake": {"tokens": 2, "first_token_delay": delay}}
        response = await post_json(base_url, body, headers={"X-Request-Id": request_id})
        assert response.code == 200
    samples = await until(lambda: _counted(base_url, count=2.0))
    assert samples, "the requests were never counted"
    ttft = {s.exemplar.labels["request_id"]: s.exemplar.value
            for s in with_exemplars(samples, "iss_llm_chat_ttft_seconds_bucket")}
    assert set(ttft) == {"fast-1", "slow-2"} and ttft["slow-2"] >= 0.45 > ttft["fast-1"]
