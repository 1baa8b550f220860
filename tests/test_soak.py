"""The short soak: storm with faults, flapping ISS sources and hostile input lose and leak nothing."""

from __future__ import annotations

from bench.soak import SoakConfig, run_soak


def test_quick_soak_loses_nothing_and_leaks_nothing(tmp_path):
    cfg = SoakConfig.quick()
    cfg.progress = False
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
