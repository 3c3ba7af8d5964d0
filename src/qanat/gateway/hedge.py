"""When to ask a second connector: a bound learned from recent channel opens (pure).

An app connection normally waits for one connector to open its channel. A
connector that is frozen (SIGSTOP, a VM paused, a network path silently
dropping) never answers, and until its keepalives time out every app
connection routed to it would wait the whole ``channel_open_timeout_s``.
So the endpoint *hedges*: when the first open has not answered within
:func:`hedge_after_s`, it opens a second channel on the next connector of
the pool, takes whichever opens first and closes the other cleanly.

The bound comes from the endpoint's recent successful opens
(:class:`OpenTimes`): ``factor`` times their 90th percentile, clamped to
``[min_s, max_s]``; with no history it is ``max_s``. On a LAN (opens of
~1 ms) a frozen connector therefore costs an app connection 0.2 s (the floor
keeps a busy machine's slow opens from doubling the channels); a connector
far away with 200 ms opens is hedged after ~800 ms; nobody waits more than
``max_s`` (1 s) for a silent connector while another healthy one is there.
Cooling and draining members are never asked as a hedge: they stay a last
resort, tried one after the other.

No I/O, the numbers are passed in; tested with hypothesis.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """How eagerly a second connector is asked.

    Attributes:
        min_s: never hedge sooner than this (opens jitter on a busy machine).
        max_s: always hedge by then when another connector is available.
        factor: hedge after this many times the usual (p90) open time.
        enabled: False never opens a second channel.
    """

    min_s: float = 0.2
    max_s: float = 1.0
    factor: float = 4.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (0 < self.min_s <= self.max_s) or self.factor < 1:
            raise ValueError("HedgePolicy needs 0 < min_s <= max_s and factor >= 1")


class OpenTimes:
    """The last ``size`` successful channel-open durations of one endpoint."""

    def __init__(self, size: int = 64) -> None:
        self._times: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        if seconds >= 0 and math.isfinite(seconds):
            self._times.append(seconds)

    def p90(self) -> float | None:
        if not self._times:
            return None
        ordered = sorted(self._times)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

    def __len__(self) -> int:
        return len(self._times)


def hedge_after_s(usual_open_s: float | None, policy: HedgePolicy) -> float:
    """Seconds to wait for the first connector before asking a second one."""
    if usual_open_s is None or not math.isfinite(usual_open_s):
        return policy.max_s
    return min(policy.max_s, max(policy.min_s, policy.factor * max(0.0, usual_open_s)))
