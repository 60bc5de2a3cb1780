"""
Rate limits: a token bucket per key (the subject), on an injected clock.
Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import math


class TokenBuckets:
    """
    C{burst} tokens per key, refilled at C{per_minute} a minute; L{take}
    spends one.  Full buckets are forgotten, so memory follows the active keys.
    C{per_minute} 0 disables the limit.
    """

    def __init__(self, clock, per_minute: float, burst: int, max_keys: int = 100_000):
        self._clock = clock
        self._rate = per_minute / 60.0
        self._burst = float(max(1, burst))
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def take(self, key: str) -> int:
        """Spend a token: 0 when allowed, else the whole seconds until one is available."""
        if self._rate <= 0:
            return 0
        now = self._clock.seconds()
        tokens, since = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - since) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self._rate))
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_keys:
            self._forget_full(now)
        return 0

    def _forget_full(self, now: float) -> None:
        for key, (tokens, since) in list(self._buckets.items()):
            if tokens + (now - since) * self._rate >= self._burst:
                del self._buckets[key]
