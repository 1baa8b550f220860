"""The short soak: storm with faults, flapping ISS sources and hostile input lose and leak nothing."""

from __future__ import annotations

from bench import procs
from bench.soak import Soak, SoakConfig, run_soak


def test_quick_soak_loses_nothing_and_leaks_nothing(tmp_path):
    cfg = SoakConfig.quick()
    cfg.progress = False
    # A bound on a stuck soak, not on speed: the quick soak takes 45-60 s here (its two passes and the
    # stopped-worker phase), but on a machine shared with other suites and benchmarks a tighter cap cut
    # the traffic short (fewer requests than planned). What is checked stays the same.
    cfg.max_seconds = 300.0
    report = run_soak(cfg, log_dir=tmp_path)

    assert report.problems() == [], report.text()
    storm = report.storm
    assert storm.requests == cfg.requests
    assert storm.completed + storm.abandoned + sum(storm.errors.values()) == storm.requests
    # The faults really happened and were reported as errors, and the caller really abandoned.
    assert storm.abandoned > cfg.requests // 2
    assert {"upstream_timeout", "upstream_dropped", "upstream_bad_chunk"} & set(storm.errors)
    assert storm.completed > 0
    # Hostile input was answered with OpenAI-shaped 4xx errors (and nothing else bad).
    assert report.bad.kinds["4xx_json"] > 20
    assert report.iss_switches and report.health_checks > 0
    assert report.upstream_open == 0 and report.upstream_aborted > 0
    assert report.after is not None and report.after.in_flight == 0
    assert report.server_exit == 0
    # Issue 19: the pass-search flood met both of its bounds (the queue's 503, the address's 429), and
    # every search waited for was answered (problems() holds any other answer, or a hang).
    flood = report.flood
    assert flood is not None and flood.requests == cfg.flood_tasks * cfg.flood_bursts * cfg.flood_burst
    assert flood.status_count(200) and flood.status_count(503) and flood.status_count(429), flood.text()
    # The 1,000-call model: each such request ended (answer or clean error), its tool round sent upstream.
    assert sum(storm.thousand_calls.values()) == cfg.thousand_calls
    assert 0 < report.largest_tool_round <= report.tool_round_bound
    # The stopped worker: killed and replaced; its callers' failures were on its own connections.
    stopped = report.stopped
    assert stopped is not None and stopped.replaced and stopped.killed_after is not None, stopped.text()
    assert stopped.victim_connections > 0 and stopped.completed_after_kill > 0, stopped.text()
    assert sum(stopped.casualties.values()) <= stopped.victim_connections
    # The chat path's first token, timed in both passes, within its bound (checked in problems()).
    assert report.probe_baseline and report.probe_first_token


def test_an_error_no_code_handled_in_the_server_log_is_a_leak(tmp_path):
    soak = Soak(SoakConfig.quick(), procs.Children(tmp_path))
    soak.check_server_log("INFO chat done\n")
    assert soak.report.problems() == []
    soak.check_server_log(
        "ERROR Task exception was never retrieved\nfuture: <Task finished coro=<f()> exception=E()>\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nE\n"
    )
    problems = soak.report.problems()
    assert len(problems) == 2
    assert any("never retrieved" in problem for problem in problems)
    assert any("Traceback" in problem for problem in problems)


def test_the_soak_server_outlives_the_threads_the_soak_used_while_starting_it(tmp_path):
    # The server dies with the thread that started it (procs.die_with_parent, PR_SET_PDEATHSIG):
    # started from an executor's thread, it got SIGTERM once that thread ended, the soak still running.
    import asyncio
    import os
    import threading
    import time
    import urllib.request

    from tests.support import sigterm_reached

    with procs.Children(tmp_path) as kids:
        soak = Soak(SoakConfig.quick(), kids)
        threads: set[int] = set()

        async def start() -> None:
            before = set(threading.enumerate())
            try:
                await soak.start()
                # The threads the start began (this loop's executor's): asyncio.run joins them as it ends.
                began = set(threading.enumerate()) - before
                threads.update(t.native_id for t in began if t.name.startswith("asyncio_"))
            finally:
                await soak.close()

        asyncio.run(start())
        deadline = time.monotonic() + 30
        while any(os.path.exists(f"/proc/self/task/{tid}") for tid in threads):  # the OS threads too
            assert time.monotonic() < deadline, "the executor's threads did not end"
            time.sleep(0.02)
        server = soak.server
        assert server is not None
        deadline = time.monotonic() + 30
        while server.alive() and sigterm_reached(server.pid):  # a SIGTERM from a thread's end, not taken yet
            assert time.monotonic() < deadline, "the server did not take its SIGTERM"
            time.sleep(0.02)
        assert server.alive(), "the server ended:\n" + server.log_tail()
        # Still serving: not draining on a SIGTERM from a thread's end...
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
            assert response.status == 200
        # ...and the SIGTERM sent now is its first: a clean drain, no "second signal".
        assert kids.stop(server, 30.0) == 0
        log = server.log_path.read_text()
        assert "second signal" not in log, log


def test_the_pass_flood_counts_an_answer_without_its_bound_or_shape_as_lost():
    from bench import passflood

    error = b'{"error": {"message": "busy", "type": "server_error", "param": null, "code": "pass_search_busy"}}'
    assert passflood.judge(200, {}, b'{"passes": []}') == (True, "200")
    assert passflood.judge(503, {"Retry-After": "1"}, error) == (True, "503 pass_search_busy")
    limited = error.replace(b"pass_search_busy", b"rate_limit_exceeded")
    assert passflood.judge(429, {"Retry-After": "3"}, limited) == (True, "429 rate_limit_exceeded")
    # Lost: a 503 or 429 with no wait to suggest, any other 5xx, a page that is not JSON, a 200 with no passes.
    assert passflood.judge(503, {}, error)[0] is False
    assert passflood.judge(429, {"Retry-After": "0"}, limited)[0] is False
    assert passflood.judge(500, {"Retry-After": "1"}, error)[0] is False
    assert passflood.judge(503, {"Retry-After": "1"}, b"<html>busy</html>")[0] is False
    assert passflood.judge(200, {}, b'{"place": {}}')[0] is False


def test_the_pass_flood_asks_at_distinct_places_as_the_server_rounds_them():
    from bench import passflood

    bursts = passflood.plan(4, 10, 30, 0.8, seed=5)
    searches = [search for task in bursts for burst in task for search in burst]
    assert len(searches) == 1200
    assert len({(round(s.latitude, 1), round(s.longitude, 1)) for s in searches}) == 1200
    assert all(-90 <= s.latitude <= 90 and -180 <= s.longitude <= 180 and 1 <= s.days <= 10 for s in searches)
    assert passflood.plan(4, 10, 30, 0.8, seed=5) == bursts  # seeded


def test_only_connection_failures_after_the_stop_are_the_stopped_workers_casualties():
    from bench import storm
    from bench.stopped_worker import split_casualties

    result = storm.StormResult()
    item = storm.Planned(0, 3, 0.0, 0.0, None, None)
    for kind, detail, ended in (
        ("lost", "connection_ClientPayloadError", 10.0),  # cut mid-answer after the stop: a casualty
        ("lost", "connection_ServerDisconnectedError", 12.0),  # a keep-alive connection to it: a casualty
        ("lost", "no_done", 11.0),  # a stream closed without [DONE] after the stop: a casualty
        ("lost", "connection_ClientPayloadError", 9.0),  # before the stop: lost
        ("lost", "hang", 13.0),  # a hang is never the fault's (the watchdog should have ended it)
        ("lost", "http_500", 13.0),
        ("lost", "clean_request_failed_upstream_timeout", 13.0),
        ("completed", "", 13.0),
    ):
        result.add(storm.Outcome(kind, detail, 0.5, None, ended), item)
    casualties = split_casualties(result, stopped_at=9.5)
    assert casualties == {"connection_ClientPayloadError": 1, "connection_ServerDisconnectedError": 1, "no_done": 1}
    assert result.lost == {"connection_ClientPayloadError": 1, "hang": 1, "http_500": 1,
                           "clean_request_failed_upstream_timeout": 1}
