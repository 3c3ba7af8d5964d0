"""Channels the connector refused: counted, and told to the operator without flooding.

When an endpoint is down, every app connection becomes one refused channel;
an app retrying in a loop would turn the log into a firehose. So each target
is logged at most once per ``quiet_s`` with the number of refusals in
between, and the count goes to the statistics (and ``/metrics``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from qanat.errors import ChannelOpenFailed
from qanat.logs import escape
from qanat.telemetry.throttle import Throttle

if TYPE_CHECKING:
    from qanat.connector.session import Stats

#: Targets remembered for log suppression (a gateway chooses targets).
MAX_TARGETS = 1000
#: The one suppression key of every channel to a target never declared.
UNDECLARED = "undeclared targets"


class LoggedDialer:
    """Wraps a dialer: refusals are counted and logged, sparingly."""

    def __init__(
        self,
        dialer: Callable[[str], Awaitable[Any]],
        log: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
        stats: Stats,
        quiet_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dialer = dialer
        self.log = log
        self.stats = stats
        self.quiet_s = quiet_s
        self._throttle = Throttle(burst=1, window_s=quiet_s, clock=clock, max_keys=MAX_TARGETS)

    async def __call__(self, target: str) -> Any:
        return await self.watch(target, self.dialer(target))

    async def watch(self, target: str, dialing: Awaitable[Any]) -> Any:
        """Await ``dialing`` (a dial of ``target``), counting and logging its refusal."""
        try:
            return await dialing
        except ChannelOpenFailed as exc:
            self.refused(target, exc)
            raise

    def refused(self, target: str, exc: ChannelOpenFailed) -> None:
        """Count and log (sparingly) one refused channel to ``target``."""
        self.stats.channels_refused += 1
        if exc.code == ChannelOpenFailed.ADMINISTRATIVELY_PROHIBITED:
            # One line per interval for all undeclared targets together: a
            # hostile gateway choosing ever new targets cannot flood the log.
            self._note(UNDECLARED, f"{escape(target)} and others: {exc.reason}")
        else:
            self._note(target, exc.reason or str(exc))

    def _note(self, target: str, reason: str) -> None:
        held = self._throttle.allow(target)
        if held is None:
            return
        more = f" ({held} more since the last report)" if held else ""
        self.log.warning("refused a channel to %s: %s%s", escape(target), escape(reason), more)
