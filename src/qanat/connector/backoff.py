"""Exponential backoff with full jitter, capped, reset after a stable session."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for consecutive failures: ``min_s * 2**n`` capped at ``max_s``,
    each drawn uniformly from [50%, 100%] of that value (jitter spreads a fleet
    of connectors that lost the gateway at the same moment)."""

    min_s: float = 0.1
    max_s: float = 300.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * float(2 ** min(self.failures, 32)))
        self.failures += 1
        jitter = float(self.rng.random())
        return ceiling * (0.5 + 0.5 * jitter)

    def reset(self) -> None:
        self.failures = 0
