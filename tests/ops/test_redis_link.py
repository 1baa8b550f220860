"""The Redis link's back-off: it grows across connect-then-fail cycles (issue 19, finding 6: it reset at
every connect, so a Redis refusing writes got 8 new connections a second), and lines about a recurring
failure are logged at most once per interval."""

from __future__ import annotations

from services.ops.redis_link import Backoff, LogEvery


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _nominal(delays: list[float], expected: list[float]) -> bool:
    return all(0.8 * e <= d <= 1.2 * e for d, e in zip(delays, expected, strict=True))


def test_the_delay_grows_across_connect_then_fail_cycles_and_resets_only_after_a_healthy_spell():
    clock = Clock()
    backoff = Backoff(first=0.25, most=5.0, flapping_most=60.0, healthy_after=30.0, clock=clock)
    delays = []
    for _ in range(10):  # connects, then fails a moment later (Redis at maxmemory refusing a write)
        backoff.connected()
        clock.now += 0.1
        delays.append(backoff.next())
        clock.now += delays[-1]
    assert _nominal(delays, [0.25, 0.5, 1, 2, 4, 8, 16, 32, 60, 60]), delays
    # A link that stayed up a while starts again from the first delay.
    backoff.connected()
    clock.now += 31
    assert _nominal([backoff.next()], [0.25])


def test_a_link_that_cannot_connect_is_tried_at_least_every_few_seconds():
    clock = Clock()
    backoff = Backoff(first=0.25, most=5.0, flapping_most=60.0, clock=clock)
    delays = [backoff.next() for _ in range(8)]
    assert _nominal(delays, [0.25, 0.5, 1, 2, 4, 5, 5, 5]), delays
    # A flap after a down spell starts from there, not from the flapping cap.
    backoff.connected()
    assert _nominal([backoff.next()], [5])


def test_a_recurring_line_is_logged_once_per_interval_with_what_was_left_out():
    clock = Clock()
    every = LogEvery(60.0, clock)
    assert every.due() == 0
    assert [every.due() for _ in range(5)] == [None] * 5
    clock.now += 61
    assert every.due() == 5
    assert every.due() is None
