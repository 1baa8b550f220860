"""The short soak: storm with faults, flapping ISS sources and hostile input lose and leak nothing."""

from __future__ import annotations

from bench import procs
from bench.soak import Soak, SoakConfig, run_soak


def test_quick_soak_loses_nothing_and_leaks_nothing(tmp_path):
    cfg = SoakConfig.quick()
    cfg.progress = False
    # A bound on a stuck soak, not on speed: the quick soak takes 20-30 s here, but on a machine
    # shared with other suites and benchmarks its 90 s cap cut the traffic short (fewer requests
    # than planned). What is checked stays the same.
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
