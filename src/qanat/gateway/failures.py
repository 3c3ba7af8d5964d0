"""Recent failures of one endpoint, for the status page: bounded, newest last.

An endpoint remembers the last few app connections it could not carry and
why (no connector could open the channel, with each connector's reason; or
the source is not in the stage allowlist). A burst of identical failures
(one app retrying in a loop) folds into one entry with a count, so a noisy
source cannot push the interesting reasons out.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from qanat.gateway.status import FailureStatus

#: Entries kept per endpoint.
DEFAULT_RECENT_FAILURES = 20
#: Longest reason text kept.
MAX_REASON_CHARS = 500


@dataclass(slots=True)
class Failure:
    at: float
    kind: str  # "channel" (no connector could open it) or "allowlist"
    source: str
    reason: str
    count: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "at": round(self.at, 3),
            "kind": self.kind,
            "source": self.source,
            "reason": self.reason,
            "count": self.count,
        }


class RecentFailures:
    """A ring buffer of :class:`Failure`, folding repeats of the newest entry."""

    def __init__(self, size: int = DEFAULT_RECENT_FAILURES) -> None:
        self._items: deque[Failure] = deque(maxlen=size)

    def add(self, kind: str, source: str, reason: str) -> None:
        reason = reason[:MAX_REASON_CHARS]
        now = time.time()
        last = self._items[-1] if self._items else None
        if last is not None and (last.kind, last.source, last.reason) == (kind, source, reason):
            last.count += 1
            last.at = now
            return
        self._items.append(Failure(now, kind, source, reason))

    def __len__(self) -> int:
        return len(self._items)

    def snapshot(self) -> tuple[FailureStatus, ...]:
        return tuple(
            FailureStatus(round(f.at, 3), f.kind, f.source, f.reason, f.count) for f in self._items
        )
