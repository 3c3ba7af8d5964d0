"""Refused app connections: counted always, logged with a bound.

An app connection whose source is outside the stage allowlist is aborted in
``connection_made`` (no read, no task, no channel): the cost of a refusal is
one accept and one RST. What must not grow with a flood is the log, so the
first ``burst`` refusals of every ``window_s`` are logged one by one with
their source, and the rest are summed up in one line when the window ends
(how many, from how many sources, the busiest ones). Memory is bounded by
``max_sources`` per window.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from qanat.logs import ContextLogger
from qanat.telemetry.throttle import Throttle

log = logging.getLogger("qanat.gateway.refusals")


class RefusalLog:
    """Counts refusals per (stage, port) and rate-limits their log lines."""

    def __init__(self, burst: int = 5, window_s: float = 10.0, max_sources: int = 1000) -> None:
        self.burst = burst
        self.window_s = window_s
        self.max_sources = max_sources
        self.total = 0
        # The decision (first ``burst`` per window) is the shared throttle's;
        # what is held back is summed up here, by source and port.
        self._throttle = Throttle(burst, window_s, clock=self._now, max_keys=1)
        self._suppressed: Counter[str] = Counter()
        self._suppressed_other = 0
        self._flush: asyncio.TimerHandle | None = None

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def refused(self, where: ContextLogger, label: str, source: str, port_total: int) -> None:
        """Record one refused connection (called from ``connection_made``).

        Args:
            where: the endpoint's logger (it carries stage and port).
            label: ``<stage>:<port>`` for the summary line.
            source: the refused source address.
            port_total: refusals on this endpoint so far, for the log line.
        """
        self.total += 1
        loop = asyncio.get_running_loop()
        # (What the throttle held back in the last window was summed up by
        # _summary already, so its count is not repeated here.)
        if self._throttle.allow() is not None:
            where.warning(
                "refused app connection from %s: not in the stage allowlist "
                "(%d refused on this port so far)",
                source,
                port_total,
            )
            return
        key = f"{source} -> {label}"
        if key in self._suppressed or len(self._suppressed) < self.max_sources:
            self._suppressed[key] += 1
        else:
            self._suppressed_other += 1
        if self._flush is None:
            end = self._throttle.window_end()
            self._flush = loop.call_at(end if end is not None else loop.time(), self._summary)

    def _summary(self) -> None:
        self._flush = None
        count = sum(self._suppressed.values()) + self._suppressed_other
        if not count:
            return
        busiest = ", ".join(f"{k} ({n})" for k, n in self._suppressed.most_common(3))
        log.warning(
            "refused %d more app connections outside the allowlist in the last %gs "
            "(%d source/port pairs; busiest: %s); %d refused in all",
            count,
            self.window_s,
            len(self._suppressed) + (1 if self._suppressed_other else 0),
            busiest,
            self.total,
        )
        self._suppressed.clear()
        self._suppressed_other = 0

    def close(self) -> None:
        """Log what is pending and stop the timer."""
        if self._flush is not None:
            self._flush.cancel()
            self._summary()
