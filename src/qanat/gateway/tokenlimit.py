"""Failed token attempts: throttled per (source, address) and globally.

A valid token is never refused by this: the front door checks the token
first (a constant-time SHA-256 comparison, cheap) and asks the limiter only
about failures. So an attacker behind the same NAT, proxy or address as a
real connector, guessing tokens for the same or another address, gets 429
while the real connector's valid token still opens its tunnel.

- per (source, address): ``burst`` failures, refilled at ``per_minute``;
  past it, that source's further failures for that address get 429 instead
  of 401 (the same information: "not admitted");
- globally: ``global_burst`` failures refilled at ``global_per_minute``, so a
  distributed guesser is slowed as a whole.

Memory is bounded (``max_keys`` pairs, the oldest forgotten first). The
refusals are not logged one by one: :class:`RefusalTally` sums them up in
one line per interval.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """The token limiter's settings (defaults as documented in security.md)."""

    burst: int = 20
    per_minute: float = 10.0
    global_burst: int = 1000
    global_per_minute: float = 600.0
    max_keys: int = 10_000


class _Bucket:
    """A leaky bucket of failures."""

    __slots__ = ("burst", "level", "rate_per_s", "stamp")

    def __init__(self, burst: int, per_minute: float, now: float) -> None:
        self.burst = burst
        self.rate_per_s = per_minute / 60.0
        self.level = 0.0
        self.stamp = now

    def _drain(self, now: float) -> None:
        self.level = max(0.0, self.level - (now - self.stamp) * self.rate_per_s)
        self.stamp = now

    def full(self, now: float) -> bool:
        self._drain(now)
        return self.level + 1.0 > self.burst

    def add(self, now: float) -> None:
        self._drain(now)
        self.level += 1.0


class TokenLimiter:
    """See the module docstring; time is passed in (monotonic seconds)."""

    def __init__(self, limits: TokenLimits | None = None) -> None:
        self.limits = limits or TokenLimits()
        self._pairs: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._global: _Bucket | None = None

    def _global_bucket(self, now: float) -> _Bucket:
        if self._global is None:
            lim = self.limits
            self._global = _Bucket(lim.global_burst, lim.global_per_minute, now)
        return self._global

    def refuse_failure(self, source: str, address_id: str, now: float) -> bool:
        """A token for ``address_id`` from ``source`` failed: answer 429 (True)
        or 401 (False)? Records the failure unless it is refused."""
        key = (source, address_id)
        bucket = self._pairs.get(key)
        if bucket is None:
            bucket = _Bucket(self.limits.burst, self.limits.per_minute, now)
        glob = self._global_bucket(now)
        if bucket.full(now) or glob.full(now):
            return True
        bucket.add(now)
        glob.add(now)
        self._pairs[key] = bucket
        self._pairs.move_to_end(key)
        while len(self._pairs) > self.limits.max_keys:
            self._pairs.popitem(last=False)
        return False


class RefusalTally:
    """Counts refused tunnel attempts for one summary line per interval."""

    def __init__(self, max_sources: int = 1000) -> None:
        self.max_sources = max_sources
        self.total = 0
        self._by_source: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._other = 0

    def add(self, source: str, reason: str) -> bool:
        """Count one refusal; True for the first of its reason in the interval
        (log that one now: at most one line per reason per interval)."""
        self.total += 1
        first = reason not in self._reasons
        if source in self._by_source or len(self._by_source) < self.max_sources:
            self._by_source[source] += 1
        else:
            self._other += 1
        self._reasons[reason] += 1
        return first

    def summary(self, interval_s: float) -> str | None:
        """The line for the interval just ended (None if nothing was refused)."""
        count = sum(self._by_source.values()) + self._other
        if count <= len(self._reasons):  # each was logged on its own already
            self._reset()
            return None
        busiest = ", ".join(f"{s} ({n})" for s, n in self._by_source.most_common(3))
        reasons = ", ".join(f"{r} {n}" for r, n in self._reasons.most_common())
        line = (
            f"refused {count} tunnel attempts in the last {interval_s:g}s ({reasons}) from"
            f" {len(self._by_source) + (1 if self._other else 0)} sources; busiest: {busiest};"
            f" {self.total} refused in all"
        )
        self._reset()
        return line

    def _reset(self) -> None:
        self._by_source.clear()
        self._reasons.clear()
        self._other = 0
