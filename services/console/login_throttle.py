"""Wrong console tokens, counted per address and in total (nginx `limit_req`'s job, for one form).

Only failures are counted, and only they are ever refused: the right token always opens the console,
so nobody's guesses (a flood from many addresses, or from the operator's own) can lock the operator
out. Past `per_address` failures from one address, or `total` from everyone, within `window`
seconds, a wrong token is answered 429 (with Retry-After) instead of 403, and one log line says so
per window, not one per guess. The token's length is what guessing is up against: CONSOLE_TOKEN
has 16 characters at least, and the generated one 32 (192 random bits).

With several workers the counts are shared through Redis (REDIS_URL), so N workers do not allow N
times the failures; each worker also counts for itself, and decides alone when Redis does not
answer within `redis_timeout`. IPv6 addresses count by their /64 (one host has them all).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from services.ops import redis_link
from services.ops.forwarded import address_key

log = logging.getLogger("iss_llm.console")

PER_ADDRESS = 5  # wrong tokens from one address ...
TOTAL = 100  # ... or from everyone ...
WINDOW_S = 60.0  # ... within this many seconds
MAX_TRACKED_ADDRESSES = 10_000
REDIS_TIMEOUT_S = 0.5
KEY_PREFIX = "iss_llm:console:wrong:"

# One round trip: the total first; an address is counted only while the total is within its budget,
# so a flood from ever new addresses cannot fill Redis with keys (each also expires with its window).
_COUNT = """
local total = redis.call('INCR', KEYS[1])
if total == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if total > tonumber(ARGV[2]) then return {total, 0} end
local mine = redis.call('INCR', KEYS[2])
if mine == 1 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return {total, mine}
"""


@dataclass(frozen=True)
class Verdict:
    """After one more wrong token: whether it is past a budget, and which."""

    address_over: bool
    total_over: bool

    @property
    def throttled(self) -> bool:
        return self.address_over or self.total_over


class LoginThrottle:
    """Counts wrong console tokens in this process (fixed windows per address, and in total)."""

    def __init__(self, per_address: int = PER_ADDRESS, total: int = TOTAL, window: float = WINDOW_S) -> None:
        self.per_address = per_address
        self.total = total
        self.window = window
        self._addresses: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._total: tuple[float, int] = (0.0, 0)

    def _count(self, key: str) -> tuple[int, int]:
        now = time.monotonic()
        since, total = self._total
        if now - since > self.window:
            since, total = now, 0
        self._total = (since, total + 1)
        since, mine = self._addresses.pop(key, (now, 0))
        if now - since > self.window:
            since, mine = now, 0
        self._addresses[key] = (since, mine + 1)
        while len(self._addresses) > MAX_TRACKED_ADDRESSES:
            self._addresses.popitem(last=False)
        return total + 1, mine + 1

    async def counts(self, key: str) -> tuple[int, int]:
        """(failures in total, failures of this address) in the current window, this one included."""
        return self._count(key)

    async def failed(self, address: str | None) -> Verdict:
        """One more wrong token from `address`: whether it is past a budget (one log line when it crosses)."""
        key = address_key(address)
        total, mine = await self.counts(key)
        verdict = Verdict(address_over=mine > self.per_address, total_over=total > self.total)
        if mine == self.per_address + 1:
            log.warning("console login: %d wrong tokens from %s within %.0fs; its wrong tokens get 429 until the "
                        "window ends (the right one still opens the console)", self.per_address, key, self.window)
        if total == self.total + 1:
            log.warning("console login: %d wrong tokens in all within %.0fs; wrong tokens get 429 until the window "
                        "ends (the right one still opens the console)", self.total, self.window)
        return verdict

    async def close(self) -> None:
        return None


class RedisLoginThrottle(LoginThrottle):
    """The same counts, shared by every worker through Redis; this process's own when Redis is away."""

    def __init__(self, url: str, per_address: int = PER_ADDRESS, total: int = TOTAL, window: float = WINDOW_S,
                 timeout: float = REDIS_TIMEOUT_S) -> None:
        super().__init__(per_address, total, window)
        self._redis = redis_link.client(url, timeout)
        self._script = self._redis.register_script(_COUNT)
        self._warned = False

    async def counts(self, key: str) -> tuple[int, int]:
        local = self._count(key)  # always: what this process decides on when Redis does not answer
        try:
            total, mine = await self._script(keys=[KEY_PREFIX + "*", KEY_PREFIX + key],
                                             args=[max(1, round(self.window)), self.total])
        except redis_link.UNAVAILABLE as exc:
            if not self._warned:
                self._warned = True
                log.warning("console login throttle: Redis unavailable (%s); counting in this worker only",
                            redis_link.describe(exc))
            return local
        self._warned = False
        # Past the total, addresses are not counted in Redis: this process's count stands in.
        return int(total), int(mine) if int(mine) else local[1]

    async def close(self) -> None:
        await self._redis.aclose()
