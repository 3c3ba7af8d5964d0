"""Brute-force protection for the public token check (the WAF's job, built in).

Each source address has a bucket of failed attempts that drains over time;
while it is full, the front door answers 429 without looking at the token.
Memory is bounded: at most ``max_sources`` addresses are tracked, the oldest
forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class FailureLimiter:
    """Allow at most ``burst`` failures, refilled at ``per_minute``, per source."""

    def __init__(
        self, burst: int = 20, per_minute: float = 10.0, max_sources: int = 10_000
    ) -> None:
        self.burst = burst
        self.rate_per_s = per_minute / 60.0
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, source: str, now: float) -> float:
        level, stamp = self._buckets.get(source, (0.0, now))
        return max(0.0, level - (now - stamp) * self.rate_per_s)

    def allow(self, source: str, now: float | None = None) -> bool:
        """Whether ``source`` may try a token at ``now`` (monotonic seconds)."""
        if source not in self._buckets:
            return True
        # Room for one more whole failure: with "< burst", the drain since the
        # last failure (a fraction of one) let a 21st attempt through a burst of 20.
        now = time.monotonic() if now is None else now
        return self._level(source, now) + 1.0 <= self.burst

    def failed(self, source: str, now: float | None = None) -> None:
        """Record one failed attempt from ``source`` at ``now``."""
        now = time.monotonic() if now is None else now
        level = self._level(source, now) + 1.0
        self._buckets[source] = (level, now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
