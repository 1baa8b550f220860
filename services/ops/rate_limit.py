"""A per-address token bucket (nginx's `limit_req` in spirit), with a bounded table of addresses.

Each address may make `per_minute` requests a minute on average and `burst` at once. The table holds
at most `max_addresses`; the one seen least recently leaves first (it comes back with a full bucket,
which is what an address unseen for a while would have anyway).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict


class RateLimit:
    """take(address): None when the request may go on, else the seconds until it could."""

    def __init__(self, per_minute: float, burst: int, max_addresses: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address: (tokens, at)
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str, now: float | None = None) -> int | None:
        """Spend one token of `address`'s bucket; None if there was one, else whole seconds to wait."""
        if not self.enabled:
            return None
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._buckets) >= self.max_addresses:
            self._buckets.popitem(last=False)
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            return None
        self._buckets[address] = (tokens, now)
        self.refused += 1
        return max(1, math.ceil((1.0 - tokens) / self.rate))
