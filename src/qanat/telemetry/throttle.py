"""One throttle for log lines that a flood would repeat (pure; the clock is passed in).

A refused app connection, a dropped datagram, a connector refusing every
channel: each is counted always, but logged at most ``burst`` times per
``window_s`` per key. The line that is let through says how many were held
back since the previous one, so nothing is hidden, only summed up. Memory is
bounded by ``max_keys`` (the least recently seen key is forgotten first).

    throttle = Throttle(burst=1, window_s=10.0, clock=loop.time)
    held = throttle.allow(target)
    if held is not None:
        log.warning("refused %s%s", target, held_back(held))
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    start: float
    passed: int
    held: int


class Throttle:
    """At most ``burst`` lines per ``window_s`` per key."""

    def __init__(
        self,
        burst: int = 1,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        if burst < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("Throttle needs burst >= 1, window_s > 0 and max_keys >= 1")
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def allow(self, key: str = "") -> int | None:
        """None: stay quiet this time. Else log now; the value is how many were held back."""
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.window_s:
            held = window.held if window is not None else 0
            self._windows[key] = _Window(now, 1, 0)
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
            return held
        if window.passed < self.burst:
            window.passed += 1
            held, window.held = window.held, 0
            return held
        window.held += 1
        return None

    def window_end(self, key: str = "") -> float | None:
        """When the current window of ``key`` ends (clock time), or None."""
        window = self._windows.get(key)
        return None if window is None else window.start + self.window_s

    def pending(self) -> int:
        """Events held back and not yet reported, over every key."""
        return sum(w.held for w in self._windows.values())


def held_back(count: int) -> str:
    """The suffix of a throttled line: "" or " (N more not logged)"."""
    return f" ({count} more not logged)" if count else ""
