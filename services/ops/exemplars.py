"""OpenMetrics exemplars for the chat metrics: which request an observation came from, so an operator
looking at a slow bucket can jump to its log lines (request_id), its trace (trace_id) and its
conversation (conversation_id).

Two jobs, both cheap and neither able to raise on the chat path:
- `exemplar_labels`: the labels, bounded to what the client accepts (names and values together at
  most 128 characters; more raises ValueError). The request id comes first (cut if it must be), a
  trace id whole or not at all, then the conversation id, shortened to the room left or dropped.
- `ExemplarGate`: at most one exemplar per histogram bucket (or counter series) per interval. The
  client keeps only the latest exemplar of each bucket and Prometheus reads it once per scrape, so
  setting one on every observation (~5-6 µs each, mostly the client's own validation) buys nothing.

This module imports no metrics library (services/ops/recorder.py explains why).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

MAX_EXEMPLAR_CHARS = 128  # OpenMetrics' limit on an exemplar's label names and values together
REQUEST_ID = "request_id"
TRACE_ID = "trace_id"  # the name Prometheus' and the client's own exemplar examples use
CONVERSATION_ID = "conversation_id"
MIN_CONVERSATION_CHARS = 8  # a shorter cut of a conversation id would match too many: dropped instead
EXEMPLAR_EVERY_S = 1.0


def exemplar_labels(request_id: str, conversation_id: str | None, trace_id: str | None) -> dict[str, str]:
    """The exemplar of one request: its ids, never more than MAX_EXEMPLAR_CHARS in all."""
    room = MAX_EXEMPLAR_CHARS - len(REQUEST_ID)
    labels = {REQUEST_ID: request_id[:room]}  # a cut id is still its log lines' prefix
    room -= len(labels[REQUEST_ID])
    if trace_id and len(TRACE_ID) + len(trace_id) <= room:
        labels[TRACE_ID] = trace_id  # a cut trace id names no trace: whole or not at all
        room -= len(TRACE_ID) + len(trace_id)
    if conversation_id:
        room -= len(CONVERSATION_ID)
        if room >= min(MIN_CONVERSATION_CHARS, len(conversation_id)):
            labels[CONVERSATION_ID] = conversation_id[:room]
    return labels


class ExemplarGate:
    """Whether an observation should carry its exemplar: the first in its bucket each interval.

    Keyed by the series (the labelled child) and the bucket the value falls in, found as the client
    finds it (the first upper bound the value does not exceed). Bounded: the series have bounded
    label values and each a fixed number of buckets."""

    def __init__(self, every_s: float = EXEMPLAR_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[tuple[int, int], float] = {}

    def due(self, series: object, now: float, value: float = 0.0, bounds: Sequence[float] = ()) -> bool:
        """True (and remembered) if `series`' bucket for `value` had no exemplar in the last interval;
        `now` is a time.monotonic() reading, `bounds` the histogram's buckets (none for a counter)."""
        key = (id(series), bisect_left(bounds, value))
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return False
        self._last[key] = now
        return True
