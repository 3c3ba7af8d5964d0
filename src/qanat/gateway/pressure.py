"""Connections that have not proven anything yet: bounded per source and in all.

Every connection the front door accepts is *unproven* until it becomes a
tunnel (valid token, 101). Unproven connections (a request head being read,
a portal or operations request) are counted per source address and in all;
past ``per_source`` or ``total`` a new one is closed at once, so slow or
idle clients cannot use up the file descriptors that tunnels and their app
connections need. The refusals are logged once per interval.

The total defaults to a quarter of the process's descriptor limit
(``RLIMIT_NOFILE``), leaving the rest to tunnels and app connections.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any

from qanat.gateway.tokenlimit import RefusalTally

_log = logging.getLogger("qanat.gateway.frontdoor")


def default_total(share: float = 0.25, floor: int = 64, ceiling: int = 16_384) -> int:
    """A share of the soft descriptor limit, within [floor, ceiling]."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return ceiling
    return max(floor, min(ceiling, int(soft * share)))


@dataclass(frozen=True, slots=True)
class PressureLimits:
    """Limits on unproven connections (see the module docstring)."""

    per_source: int = 64
    total: int = 0  # 0: default_total()
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    log_interval_s: float = 10.0


class ConnectionGate:
    """Counts unproven connections; decides whether one more may stay."""

    def __init__(self, limits: PressureLimits | None = None) -> None:
        self.limits = limits or PressureLimits()
        self.total_cap = self.limits.total or default_total()
        self.open: Counter[str] = Counter()
        self.count = 0
        self.refused_source: Counter[str] = Counter()
        self.refused_total = 0
        self.refused_ever = 0

    def admit(self, source: str) -> bool:
        """Count one more connection from ``source``, or refuse it (False)."""
        if self.open[source] >= self.limits.per_source:
            self.refused_source[source] += 1
            self.refused_ever += 1
            return False
        if self.count >= self.total_cap:
            self.refused_total += 1
            self.refused_ever += 1
            return False
        self.open[source] += 1
        self.count += 1
        return True

    def release(self, source: str) -> None:
        """The connection became a tunnel, or closed."""
        if self.open[source] <= 0:
            return
        self.open[source] -= 1
        self.count -= 1
        if not self.open[source]:
            del self.open[source]

    def summary(self) -> str | None:
        """One line on what was refused since the last call, or None."""
        refused = sum(self.refused_source.values()) + self.refused_total
        if not refused:
            return None
        busiest = ", ".join(f"{s} ({n})" for s, n in self.refused_source.most_common(3))
        line = (
            f"connection pressure: closed {refused} unproven connections in the last"
            f" {self.limits.log_interval_s:g}s ({sum(self.refused_source.values())} over"
            f" {self.limits.per_source} per source{'; busiest ' + busiest if busiest else ''};"
            f" {self.refused_total} over the total of {self.total_cap}); {self.count} open now"
        )
        self.refused_source.clear()
        self.refused_total = 0
        return line


class DoorPressure:
    """The front door's hardening state and its once-per-interval log lines.

    Holds the connection gate, the tally of refused tunnel attempts and the
    trusted proxy networks; :meth:`noted` makes sure a summary is written
    when the interval ends (no timer runs while nothing is refused).
    """

    def __init__(self, gate: ConnectionGate, trusted: tuple[Any, ...] = ()) -> None:
        self.gate = gate
        self.tally = RefusalTally()
        self.trusted = trusted
        self._flush: asyncio.TimerHandle | None = None

    def noted(self) -> None:
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.gate.limits.log_interval_s, self.flush)

    def flush(self) -> None:
        self._flush = None
        for line in (self.gate.summary(), self.tally.summary(self.gate.limits.log_interval_s)):
            if line is not None:
                _log.warning("%s", line)

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self.flush()
