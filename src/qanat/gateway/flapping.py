"""Backing off connectors that connect and disconnect in a tight loop.

Every tunnel costs the gateway a key exchange and, with many ports, hundreds
of listeners bound and closed. A connector stuck in a crash loop or a
misconfigured reconnect loop must not eat that for everyone else, so the
front door counts accepted upgrades per *connector key* (stage + the
connector's identity header, or for stock connectors stage + source address
+ declared ports): more than ``max_connects`` within ``window_s`` and the key
is refused with ``429 Too Many Requests`` and ``Retry-After`` for
``backoff_s``, doubled on each repeat ("strike") up to ``backoff_max_s``.
Strikes are forgotten once a back-off has been over for ``backoff_max_s``.

Only clients that presented a valid token get here, so nobody without the
stage's token can push a connector into back-off. Memory is bounded by
``max_keys`` (least recently seen forgotten first). No I/O; the clock is
passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from qanat.gateway.status import FlapStatus


@dataclass
class _Record:
    connects: deque[float] = field(default_factory=deque)
    strikes: int = 0
    backoff_until: float = 0.0
    last_strike: float = 0.0
    refused: int = 0
    refused_total: int = 0
    source: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the front door does with one upgrade."""

    retry_after_s: float | None  # None: go ahead
    strike: int = 0
    refused: int = 0

    @property
    def allowed(self) -> bool:
        return self.retry_after_s is None

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s or 0.0)))


class FlapGuard:
    """Counts upgrades per connector key and decides back-offs."""

    def __init__(
        self,
        max_connects: int = 10,
        window_s: float = 60.0,
        backoff_s: float = 10.0,
        backoff_max_s: float = 300.0,
        max_keys: int = 10_000,
    ) -> None:
        self.max_connects = max(1, max_connects)
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.backoff_max_s = max(backoff_max_s, backoff_s)
        self.max_keys = max_keys
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def check(self, key: str, now: float) -> Verdict:
        """Before the 101: may ``key`` open a tunnel now?"""
        record = self._records.get(key)
        if record is None or now >= record.backoff_until:
            return Verdict(None)
        record.refused += 1
        record.refused_total += 1
        return Verdict(record.backoff_until - now, record.strikes, record.refused)

    def connected(self, key: str, now: float, source: str = "") -> Verdict:
        """After the 101: count it; a non-None ``retry_after_s`` means a new strike.

        The tunnel that tipped the balance is still served; the back-off
        applies to the attempts after it.
        """
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
            while len(self._records) > self.max_keys:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        record.source = source or record.source
        if record.strikes and now - record.backoff_until > self.backoff_max_s:
            record.strikes = 0
        connects = record.connects
        connects.append(now)
        while connects and connects[0] <= now - self.window_s:
            connects.popleft()
        if len(connects) <= self.max_connects:
            return Verdict(None)
        record.strikes += 1
        record.last_strike = now
        record.refused = 0
        backoff = min(self.backoff_max_s, self.backoff_s * 2 ** (record.strikes - 1))
        record.backoff_until = now + backoff
        connects.clear()
        return Verdict(backoff, record.strikes)

    def snapshot(self, now: float) -> tuple[FlapStatus, ...]:
        """Keys backed off now or struck recently, for status."""
        return tuple(
            FlapStatus(
                connector=key,
                source=record.source,
                strikes=record.strikes,
                backed_off_for_s=round(max(0.0, record.backoff_until - now), 3),
                refused_upgrades=record.refused_total,
            )
            for key, record in self._records.items()
            if record.strikes
        )
