"""GET /metrics read by the Prometheus client's own parser: each kind of ending moves exactly its series."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from services.ops.metrics import ModelLabels
from tests.conftest import ROOT, open_stream, post_json, sse_events

ROUTE = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Where is the ISS?"}]
DASHBOARD = ROOT / "dashboards" / "iss-llm.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, sorted labels), and every family's type, through the client's parser."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


async def scrape(base_url: str, headers: dict[str, str] | None = None) -> Samples:
    response = await AsyncHTTPClient().fetch(base_url + "/metrics", headers=headers or {}, raise_error=False)
    assert response.code == 200, response.body[:300]
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.body.decode())[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The chat series that changed between two scrapes, and by how much."""
    changes = {}
    for key, new in after.items():
        name = key[0]
        # The ISS and console series tell their own story (background fetches, sockets), not the chat's.
        scraped_state = name.startswith(("iss_llm_iss_", "iss_llm_console_")) and "lookup" not in name
        if not name.startswith("iss_llm_") or scraped_state:
            continue
        delta = new - before.get(key, 0.0)
        if delta:
            changes[key] = delta
    return changes


def counts(changes: dict, suffix: str = "_count") -> dict[str, dict[tuple, float]]:
    """Histogram counts (or counters) that moved, by metric name, keyed by their labels."""
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for (name, labels), delta in changes.items():
        if name.endswith(suffix):
            out[name.removesuffix(suffix)][labels] = delta
    return out


async def until(check, timeout: float = 10.0):
    """Poll `check()` (an awaitable factory) until it returns something truthy, bounded in time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_a_done_stream_moves_its_counters_and_the_first_token_split_adds_up(base_url, upstream):
    before = await scrape(base_url)
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    response = await post_json(base_url, body)
    assert response.code == 200 and sse_events(response.body)[-1] == "[DONE]"
    after = await until(lambda: _scrape_when(base_url, "iss_llm_chat_requests_total", outcome="done"))
    changes = moved(before, after)
    r = (("outcome", "done"), ("route", ROUTE), ("status", "200"))
    assert {k: v for k, v in changes.items() if k[0] == "iss_llm_chat_requests_total"} == {
        ("iss_llm_chat_requests_total", r): 1.0}
    histograms = counts(changes)
    route = (("route", ROUTE),)
    assert histograms == {
        "iss_llm_chat_duration_seconds": {(("outcome", "done"), ("route", ROUTE)): 1.0},
        "iss_llm_added_before_upstream_seconds": {route: 1.0},
        "iss_llm_added_after_first_token_seconds": {route: 1.0},
        "iss_llm_chat_ttft_seconds": {route: 1.0},
        "iss_llm_upstream_ttft_seconds": {(("model", "other"),): 1.0},  # a caller's own name: not configured
        "iss_llm_answer_tokens": {route: 1.0},
        "iss_llm_iss_lookup_seconds": {(): 1.0},
    }
    assert changes[("iss_llm_answer_tokens_sum", route)] == 5.0  # the fake's five content chunks
    # The caller's first-token time is exactly the three parts: before the upstream, the upstream, after.
    parts = sum(changes[(f"iss_llm_{name}_sum", labels)] for name, labels in (
        ("added_before_upstream_seconds", route), ("upstream_ttft_seconds", (("model", "other"),)),
        ("added_after_first_token_seconds", route)))
    assert parts == pytest.approx(changes[("iss_llm_chat_ttft_seconds_sum", route)], abs=1e-6)
    assert 0 < changes[("iss_llm_chat_ttft_seconds_sum", route)] <= changes[
        ("iss_llm_chat_duration_seconds_sum", (("outcome", "done"), ("route", ROUTE)))]
    assert value(after, "iss_llm_chat_in_flight") == 0.0
    assert not any(k[0].startswith(("iss_llm_upstream_errors", "iss_llm_fallbacks")) for k in changes)


async def _scrape_when(base_url: str, name: str, **labels: str) -> Samples | None:
    """A scrape, once a series with these labels exists (the outcome is counted as the answer ends)."""
    samples = await scrape(base_url)
    wanted = set(labels.items())
    return samples if any(k[0] == name and wanted <= set(k[1]) for k in samples) else None


async def test_a_cancelled_stream_counts_as_cancelled_with_no_answer_size(base_url, upstream):
    before = await scrape(base_url)
    body = {"model": "m", "messages": MESSAGES, "stream": True,
            "x_fake": {"tokens": 200, "gap": 0.05}}
    _reader, writer, _ = await open_stream(base_url, body, events=2)
    writer.close()
    assert await upstream.wait_streams_closed(10)
    after = await until(lambda: _scrape_when(base_url, "iss_llm_chat_requests_total", outcome="cancelled"))
    changes = moved(before, after)
    assert {k: v for k, v in changes.items() if k[0] == "iss_llm_chat_requests_total"} == {
        ("iss_llm_chat_requests_total", (("outcome", "cancelled"), ("route", ROUTE), ("status", "499"))): 1.0}
    histograms = counts(changes)
    assert histograms["iss_llm_chat_duration_seconds"] == {(("outcome", "cancelled"), ("route", ROUTE)): 1.0}
    assert "iss_llm_answer_tokens" not in histograms  # an abandoned answer has no size
    assert histograms["iss_llm_chat_ttft_seconds"] == {(("route", ROUTE),): 1.0}  # it did reach the caller
    assert value(after, "iss_llm_chat_in_flight") == 0.0


@pytest.mark.parametrize("overrides", [{"fallback_reply": None}, {"fallback_reply": "Say that again?"}])
async def test_an_upstream_failure_counts_as_error_or_fallback_with_its_code(base_url, upstream, overrides):
    fallback = bool(overrides["fallback_reply"])
    before = await scrape(base_url)
    body = {"model": "m", "messages": MESSAGES, "stream": True, "x_fake": {"fault": "status", "status": 503}}
    response = await post_json(base_url, body)
    outcome, status = ("fallback", "200") if fallback else ("error", "502")
    assert response.code == int(status)
    after = await until(lambda: _scrape_when(base_url, "iss_llm_chat_requests_total", outcome=outcome))
    changes = moved(before, after)
    expected = {
        ("iss_llm_chat_requests_total", (("outcome", outcome), ("route", ROUTE), ("status", status))): 1.0,
        ("iss_llm_upstream_errors_total", (("code", "upstream_error"),)): 1.0,
    }
    if fallback:
        expected[("iss_llm_fallbacks_total", ())] = 1.0
    assert {k: v for k, v in changes.items() if k[0].endswith("_total")} == expected
    histograms = counts(changes)
    assert histograms == {
        "iss_llm_chat_duration_seconds": {(("outcome", outcome), ("route", ROUTE)): 1.0},
        "iss_llm_added_before_upstream_seconds": {(("route", ROUTE),): 1.0},
        "iss_llm_iss_lookup_seconds": {(): 1.0},
    }  # no first token: none of the first-token histograms moved


@pytest.mark.parametrize("overrides", [{"keepalive_interval": 0.1}])
async def test_keepalives_are_counted_as_sent(base_url, upstream, overrides):
    before = await scrape(base_url)
    body = {"model": "m", "messages": MESSAGES, "stream": True, "x_fake": {"tokens": 2, "first_token_delay": 0.55}}
    response = await post_json(base_url, body)
    sent = response.body.count(b"\n: ") + response.body.startswith(b": ")
    assert sent >= 2
    after = await until(lambda: _scrape_when(base_url, "iss_llm_chat_requests_total", outcome="done"))
    assert value(after, "iss_llm_keepalives_total") - value(before, "iss_llm_keepalives_total") == sent


@pytest.mark.parametrize("overrides", [{"model_map": (("nova-iss", "gpt-conf"),)}])
async def test_labels_never_carry_caller_data_and_only_configured_models_get_a_model_label(base_url, upstream,
                                                                                        overrides):
    # Issue 19, finding 8: any caller's made-up names took the model label's slots, so the operator's
    # own models could end up counted as "other". Now only configured names get a value of their own.
    marker = "violet-kangaroo-7731"
    for index in range(20):
        body = {"model": f"caller-model-{index}", "stream": True, "messages": [{"role": "user", "content": marker}]}
        response = await post_json(base_url, body, headers={"conversation-id": f"conv-{marker}",
                                                            "X-Request-Id": f"rid-{marker}-{index}"})
        assert response.code == 200
    mapped = await post_json(base_url, {"model": "nova-iss", "stream": True, "messages": MESSAGES})
    assert mapped.code == 200
    text = (await AsyncHTTPClient().fetch(base_url + "/metrics")).body.decode()
    assert marker not in text
    samples = parse(text)[0]
    models = {dict(labels)["model"]: value for (name, labels), value in samples.items()
              if name == "iss_llm_upstream_ttft_seconds_count"}
    assert models == {"other": 20.0, "gpt-conf": 1.0}


def test_model_labels_keep_configured_names_and_send_the_rest_to_other():
    labels = ModelLabels(["gpt-4o-mini", "my model", None])
    assert labels("gpt-4o-mini") == "gpt-4o-mini"
    assert labels("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"  # the upstream's dated snapshot of it
    assert labels("my model") == "my_model"
    assert labels("gpt-4o") == "other" and labels("a b\n{c}") == "other" and labels("x" * 500) == "other"
    assert labels(None) == "none"


@pytest.mark.parametrize("overrides", [{"metrics_public": False, "server_api_key": "metrics-key-0123456789"}])
async def test_metrics_behind_the_server_key_when_not_public(base_url, overrides):
    client = AsyncHTTPClient()
    refused = await client.fetch(base_url + "/metrics", raise_error=False)
    assert refused.code == 401 and orjson.loads(refused.body)["error"]["code"] == "missing_api_key"
    wrong = await client.fetch(base_url + "/metrics", raise_error=False, headers={"Authorization": "Bearer nope"})
    assert wrong.code == 401
    samples = await scrape(base_url, {"Authorization": "Bearer metrics-key-0123456789"})
    assert ("iss_llm_chat_in_flight", ()) in samples


@pytest.mark.parametrize("overrides", [{"metrics_enabled": False}])
async def test_metrics_off_means_no_endpoint(base_url, upstream, overrides):
    response = await AsyncHTTPClient().fetch(base_url + "/metrics", raise_error=False)
    assert response.code == 404
    chat = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": True})
    assert chat.code == 200 and sse_events(chat.body)[-1] == "[DONE]"


async def test_openmetrics_when_the_scraper_asks_for_it(base_url):
    response = await AsyncHTTPClient().fetch(
        base_url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(response.body.decode())}
    assert {"iss_llm_chat_requests", "iss_llm_chat_ttft_seconds", "process_cpu_seconds"} <= names


async def test_iss_health_is_read_at_scrape_time(app, base_url, open_notify):
    assert await app.services.tracker.current() is not None
    samples = await scrape(base_url)
    assert value(samples, "iss_llm_iss_status", status="live") == 1.0
    assert value(samples, "iss_llm_iss_status", status="unavailable") == 0.0
    assert 0 <= value(samples, "iss_llm_iss_position_age_seconds", source="open-notify") < 60
    assert value(samples, "iss_llm_iss_source_state", source="open-notify", state="ok") == 1.0
    assert value(samples, "iss_llm_iss_fetches_total", source="open-notify", result="ok") >= 1
    assert value(samples, "iss_llm_iss_elements_age_seconds", origin="bundled") > 0


async def test_a_failing_iss_source_shows_as_failing(app, base_url, open_notify):
    open_notify.fail("open-notify", "500")
    await app.services.tracker.current()
    samples = await until(lambda: _scrape_when(base_url, "iss_llm_iss_fetches_total", result="error"))
    assert value(samples, "iss_llm_iss_source_state", source="open-notify", state="failing") == 1.0
    assert value(samples, "iss_llm_iss_source_consecutive_failures", source="open-notify") >= 1
    assert value(samples, "iss_llm_iss_status", status="propagating") == 1.0


async def test_every_metric_the_dashboard_queries_is_exposed(app, base_url, open_notify):
    await app.services.tracker.current()  # a live fix: the ISS families have their samples and labels
    response = await AsyncHTTPClient().fetch(base_url + "/metrics")
    samples, types = parse(response.body.decode())
    exposed: dict[str, set[str]] = defaultdict(set)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    labels_of: dict[str, set[str]] = defaultdict(set)
    for (name, labels), _ in samples.items():
        labels_of[name].update(key for key, _ in labels)
    # The chat's families with labels show no sample until used: their names come from HELP/TYPE,
    # their labels from the instruments' own declarations.
    for family, kind in types.items():
        for suffix in suffixes.get(kind, ("",)):
            exposed[family + suffix] = labels_of.get(family + suffix, set())
    declared = _declared_labels()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][0]["query"]["query"])
    assert len(exprs) > 20
    for expr in exprs:
        names = re.findall(r"\b((?:iss_llm|process|python)_[a-z0-9_]+)\b", expr)
        assert names, expr
        for name in names:
            assert name in exposed, f"{name} (in {expr!r}) is not exposed"
            # Label names used in selectors and `by (...)` must exist on that metric.
            known = exposed[name] | declared.get(name, set()) | {"le", "instance", "job"}
            for label in re.findall(r"(\w+)\s*(?:=~|!=|!~|=)\s*\"", expr):
                assert label in known, f"label {label} not on {name} ({expr!r})"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in group.split(",")):
                assert any(label in exposed[n] | declared.get(n, set()) | {"le", "instance", "job"}
                           for n in names), f"label {label} not on any of {names}"


def _declared_labels() -> dict[str, set[str]]:
    """The label names each instrument is declared with, by every sample name it can produce."""
    from services.ops.metrics import Metrics

    metrics = Metrics()
    out: dict[str, set[str]] = {}
    for attribute in vars(metrics).values():
        names = getattr(attribute, "_labelnames", None)
        base = getattr(attribute, "_name", None)
        if names is None or base is None:
            continue
        for suffix in ("", "_total", "_bucket", "_count", "_sum"):
            out[base + suffix] = set(names)
    return out


MULTIPROCESS = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from services.ops import multiprocess
    path = multiprocess.prepare({path!r})
    from services.ops import metrics as m  # after prepare(): the client reads the variable at import

    class Record:
        path = "/v1/chat/completions"; stream = True; outcome = "done"; status = 200
        upstream_model = "gpt-test"; error_code = None; tokens = 7
        request_id = "req-1"; conversation_id = "conv-1"; trace_id = None
        started = 0.0; upstream_sent = 0.001; first_token_at = 0.101; first_written = 0.102; ended = 0.5

    pids = []
    for worker in range(3):
        pid = os.fork()
        if pid == 0:
            worker_metrics = m.Metrics()
            worker_metrics.started()
            for _ in range(worker + 1):
                worker_metrics.outcome(Record())
            fetched = {{"successes": worker + 1, "failures": 1}}
            worker_metrics.watch_iss(lambda: {{"sources": {{"open-notify": dict(fetched)}}}})
            worker_metrics.sync_iss_fetches()
            fetched["successes"] += 10
            worker_metrics.sync_iss_fetches()  # adds the 10 new ones, not the totals again
            worker_metrics.sync_iss_fetches()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    scraper = m.Metrics()
    before_dead = scraper.exposition(None)[0].decode()
    for pid in pids:
        multiprocess.worker_exited(pid)
    sys.stdout.write(before_dead + "\\n#----\\n" + scraper.exposition(None)[0].decode())
""")


def test_multiprocess_totals_are_the_whole_servers(tmp_path):
    """Workers forked after multiprocess.prepare(): a scrape from any of them sums every worker."""
    stale = tmp_path / "counter_999.db"
    stale.write_bytes(b"left by an earlier run")
    script = MULTIPROCESS.format(root=str(ROOT), path=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    alive, dead = result.stdout.split("#----")
    samples, _ = parse(dead)
    assert value(samples, "iss_llm_chat_requests_total", route=ROUTE, outcome="done", status="200") == 6.0
    assert value(samples, "iss_llm_chat_ttft_seconds_count", route=ROUTE) == 6.0
    assert value(samples, "iss_llm_answer_tokens_sum", route=ROUTE) == 42.0
    # Each worker's ISS fetches, copied into counters every worker shares: 1+2+3 and 10 more each.
    assert value(samples, "iss_llm_iss_fetches_total", source="open-notify", result="ok") == 36.0
    assert value(samples, "iss_llm_iss_fetches_total", source="open-notify", result="error") == 3.0
    # In flight counts live workers only: three were in flight, then every one exited.
    assert value(parse(alive)[0], "iss_llm_chat_in_flight") == 3.0
    assert value(samples, "iss_llm_chat_in_flight") == 0.0
    assert not stale.exists()


def test_preparing_the_multiprocess_mode_after_the_client_was_imported_fails_clearly(tmp_path, monkeypatch):
    """The client picks its mode at import: a late prepare() would leave every worker counting alone."""
    from services.ops import multiprocess

    monkeypatch.delenv(multiprocess.ENV, raising=False)
    assert "prometheus_client" in sys.modules  # this module imports it
    with pytest.raises(RuntimeError, match="imported before PROMETHEUS_MULTIPROC_DIR was set"):
        multiprocess.prepare(tmp_path)
    assert multiprocess.ENV not in os.environ


def test_the_server_process_imports_the_client_only_after_choosing_its_mode():
    """server.py must not import prometheus_client before main() runs multiprocess.prepare()."""
    probe = "import sys, server; print('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_dashboard_is_grafana_importable_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"] for panel in dashboard["panels"])
    for needed in ("First-token split", "outcome", "ISS"):
        assert needed in titles
    assert Path(DASHBOARD).stat().st_size < 200_000


@pytest.mark.parametrize("overrides", [{"server_api_key": "server-key-0123456789abcdef"}])
async def test_requests_refused_before_they_begin_count_as_errors_with_their_status(base_url, overrides):
    key = {"Authorization": "Bearer server-key-0123456789abcdef"}  # with a key set, /metrics wants it too
    before = await scrape(base_url, key)
    refused = await post_json(base_url, {"model": "m", "messages": MESSAGES})
    assert refused.code == 401
    bad = await post_json(base_url, None, raw=b"{not json", headers=key)
    assert bad.code == 400
    after = await scrape(base_url, key)
    changes = moved(before, after)
    assert changes == {
        ("iss_llm_chat_requests_total", (("outcome", "error"), ("route", ROUTE), ("status", "401"))): 1.0,
        ("iss_llm_chat_requests_total", (("outcome", "error"), ("route", ROUTE), ("status", "400"))): 1.0,
    }


async def test_console_sockets_and_requested_resyncs_are_counted(base_url):
    from tests.console.test_console import connect, console_cookie, read_frame

    before = await scrape(base_url)
    assert value(before, "iss_llm_console_sockets") == 0
    ws = await connect(base_url, await console_cookie(base_url))
    assert (await read_frame(ws))["type"] == "hello"
    assert value(await scrape(base_url), "iss_llm_console_sockets") == 1
    ws.write_message(orjson.dumps({"op": "resync"}).decode())
    while (await read_frame(ws))["type"] != "snapshot":
        pass
    after = await scrape(base_url)
    assert value(after, "iss_llm_console_resyncs_total", reason="requested") == 1
    assert value(after, "iss_llm_console_events_dropped_total") == 0
    ws.close()
    closed = await until(lambda: _scrape_if(base_url, lambda s: value(s, "iss_llm_console_sockets") == 0))
    assert closed is not None


async def _scrape_if(base_url: str, check) -> Samples | None:
    samples = await scrape(base_url)
    return samples if check(samples) else None


async def test_a_console_that_fell_behind_counts_its_lost_events():
    from services.console import MemoryHub, SubscriberPolicy
    from services.ops.metrics import Metrics

    metrics = Metrics()
    hub = MemoryHub(10, SubscriberPolicy(max_frames=3))
    hub.fanout.on_resync = metrics.console_resynced
    subscription = hub.subscribe()
    for index in range(10):  # ten batches of one event; the backlog keeps three
        hub.publish({"type": "request", "id": f"r{index}", "t": 0.0, "messages": [], "params": {}})
        hub.flush()
    messages = subscription.drain()
    snapshot = orjson.loads(messages[0])
    assert snapshot["type"] == "snapshot" and snapshot["reason"] == "overflow"
    samples = parse(metrics.exposition(None)[0].decode())[0]
    assert value(samples, "iss_llm_console_events_dropped_total") == snapshot["dropped"] == 7
    assert value(samples, "iss_llm_console_resyncs_total", reason="overflow") == 1
    subscription.close()


@pytest.mark.parametrize("overrides", [{"supersede": "conversation"}])
async def test_a_superseded_stream_counts_as_superseded(base_url, upstream, overrides):
    before = await scrape(base_url)
    slow = {"model": "m", "messages": MESSAGES, "stream": True, "x_fake": {"tokens": 300, "gap": 0.02}}
    _reader, writer, _ = await open_stream(base_url, slow, headers={"conversation-id": "turns"}, events=2)
    newer = await post_json(base_url, {"model": "m", "messages": MESSAGES, "stream": True},
                            headers={"conversation-id": "turns"})
    assert sse_events(newer.body)[-1] == "[DONE]"
    after = await until(lambda: _scrape_when(base_url, "iss_llm_chat_requests_total", outcome="superseded"))
    writer.close()
    changes = moved(before, after)
    assert {k: v for k, v in changes.items() if k[0] == "iss_llm_chat_requests_total"} == {
        ("iss_llm_chat_requests_total", (("outcome", "superseded"), ("route", ROUTE), ("status", "200"))): 1.0,
        ("iss_llm_chat_requests_total", (("outcome", "done"), ("route", ROUTE), ("status", "200"))): 1.0,
    }
    histograms = counts(changes)
    assert histograms["iss_llm_chat_duration_seconds"] == {
        (("outcome", "superseded"), ("route", ROUTE)): 1.0, (("outcome", "done"), ("route", ROUTE)): 1.0}
    assert histograms["iss_llm_chat_ttft_seconds"] == {(("route", ROUTE),): 2.0}  # both reached their caller
    assert histograms["iss_llm_answer_tokens"] == {(("route", ROUTE),): 1.0}  # only the whole answer has a size
    assert value(after, "iss_llm_chat_in_flight") == 0.0


@pytest.mark.parametrize("overrides", [{"first_token_timeout": 0.3}])
async def test_a_first_token_timeout_counts_as_an_upstream_error(app, base_url, upstream, overrides):
    await app.services.tracker.current()  # warm: the deadline is the upstream's alone
    before = await scrape(base_url)
    body = {"model": "m", "messages": MESSAGES, "stream": True, "x_fake": {"first_token_delay": 3}}
    response = await post_json(base_url, body)
    assert response.code == 504
    after = await until(lambda: _scrape_when(base_url, "iss_llm_upstream_errors_total", code="first_token_timeout"))
    changes = moved(before, after)
    assert {k: v for k, v in changes.items() if k[0].endswith("_total")} == {
        ("iss_llm_chat_requests_total", (("outcome", "error"), ("route", ROUTE), ("status", "504"))): 1.0,
        ("iss_llm_upstream_errors_total", (("code", "first_token_timeout"),)): 1.0,
    }
