"""A portal or operations connection after the front door: an idle deadline.

Once the front door has read a complete request head it hands the
connection to the HTTP application (aiohttp), whose own keep-alive timer is
long and is stopped by any byte. :class:`IdleGuard` sits between the
transport and that protocol, forwarding every callback unchanged, and
closes the connection when the client has sent nothing for ``idle_s``; it
also tells the front door's connection gate when the connection ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class IdleGuard(asyncio.Protocol):
    """Forwards to ``inner``; aborts after ``idle_s`` without received bytes."""

    def __init__(self, inner: asyncio.Protocol, idle_s: float, on_lost: Callable[[], None]) -> None:
        self.inner = inner
        self.idle_s = idle_s
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last = time.monotonic()
        self._arm(self.idle_s)
        self.inner.connection_made(transport)

    def _arm(self, delay: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(max(0.05, delay), self._check)

    def _check(self) -> None:
        self.timer = None
        left = self.last + self.idle_s - time.monotonic()
        if left > 0:
            self._arm(left)
        elif self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            self.inner.connection_lost(exc)
        finally:
            self.on_lost()

    def __getattr__(self, name: str) -> Any:
        # Anything else the HTTP application's protocol offers.
        return getattr(self.inner, name)
