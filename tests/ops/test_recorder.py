"""Metrics and NullMetrics are both Recorders: every call the server makes, with the same signature."""

from __future__ import annotations

import inspect

import pytest

from services.ops.metrics import Metrics
from services.ops.recorder import NullMetrics, Recorder


def _members() -> list[str]:
    return sorted(name for name, value in vars(Recorder).items()
                  if not name.startswith("_") and inspect.isfunction(value))


def test_the_protocol_names_every_call_the_server_makes():
    assert len(_members()) == 13  # a new call belongs in Recorder, so NullMetrics must answer it too


@pytest.mark.parametrize("recorder", [Metrics, NullMetrics])
def test_each_recorder_has_every_call_of_the_protocol_with_its_signature(recorder):
    for name in _members():
        mine = getattr(recorder, name, None)
        assert mine is not None, f"{recorder.__name__} has no {name}"
        assert inspect.signature(mine) == inspect.signature(getattr(Recorder, name)), (recorder.__name__, name)
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(getattr(Recorder, name)), name


def test_null_metrics_is_its_own_class_and_records_nothing():
    assert not issubclass(NullMetrics, Metrics)
    null = NullMetrics()
    null.started()
    null.refused("/v1/chat/completions", "error", 401)
    null.console_resynced("overflow", 3)
    assert null.exposition(None) == (b"", "text/plain")
    assert vars(null) == {}  # nothing kept
