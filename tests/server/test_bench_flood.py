"""bench/flood.py runs: the pass-search flood case measures chat beside no flood and a floor, in one run.
Figures come from `python -m bench.flood`, never from a test."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

from bench import flood, procs


def test_flood_paths_are_distinct_places_every_round():
    paths = {flood.flood_path(number, round_number, 10) for number in range(200) for round_number in range(6)}
    assert len(paths) == 200 * 6


def test_a_run_with_failures_does_not_meet_the_target():
    kinds = {kind: {"ttfc": [0.05] * 10, "failed": 0, "cpu_s": 0.1, "requests": 10} for kind in flood.KINDS}
    good = flood.summarize(flood.Config(), {"kinds": kinds, "flood_sent": 200}, datetime.now(UTC))
    assert good["met"] and good["added_p95_ms"] == 0
    kinds["on"] = {"ttfc": [], "failed": 10, "cpu_s": 0.1, "requests": 10}
    bad = flood.summarize(flood.Config(), {"kinds": kinds, "flood_sent": 200}, datetime.now(UTC))
    assert not bad["met"]
    assert "NOT met" in flood.markdown(bad)


def test_flood_command_measures_chat_without_and_with_a_flood(tmp_path):
    """One tiny run of the real command: fake upstream, server, flooder; every kind measured, none failed."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.flood", "--rounds", "1", "--flood", "20", "--callers", "2", "--window", "0.5",
         "--settle", "0.2", "--out", str(tmp_path)],
        cwd=procs.ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "flood.json").read_text())
    assert set(result["rows"]) == set(flood.KINDS)
    for kind, row in result["rows"].items():
        assert row["requests"] > 0 and row["failed"] == 0, (kind, row)
        assert row["ttfc_p95_ms"] >= row["ttfc_p50_ms"] > 0
    assert result["flood_sent"] == 20
    assert "Added first-token p95" in (tmp_path / "flood.md").read_text()
