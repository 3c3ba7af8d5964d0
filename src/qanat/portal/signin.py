"""Sign-in throttling and the password-hashing pool.

Passwords are checked with scrypt, which is slow on purpose; so is guessing.
Two things keep that from hurting anyone but the guesser:

- :class:`FailureLimiter` counts failed sign-ins per user name and per
  source address in a sliding window. Past the limit, sign-ins for that
  name (or from that source) are refused with 429 at once, without hashing,
  also with the right password, until the window has passed. Attempts
  refused that way still count for their source. Successes are not
  counted; a success clears its source's count.
- :class:`HashingPool` runs every password hash on its own small thread pool
  with a bounded queue, so parallel guessing cannot fill the worker threads
  that the rest of the control plane (deactivation, API keys, the gateway's
  database hooks) uses; beyond the queue bound, sign-ins get 429 at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from qanat.errors import TooManyAttempts

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SignInLimits:
    """How sign-in is throttled.

    Attributes:
        per_user: failed sign-ins per user name within ``window_s`` before
            that name is refused (even with the right password).
        per_source: failed sign-ins per source address within ``window_s``.
        window_s: the sliding window.
        hash_threads: threads hashing passwords at the same time.
        hash_queue: sign-ins waiting for a hashing thread before more are refused.
        max_keys: names and sources remembered (oldest forgotten first).
    """

    per_user: int = 10
    per_source: int = 30
    window_s: float = 300.0
    hash_threads: int = 2
    hash_queue: int = 16
    max_keys: int = 10_000


class FailureLimiter:
    """Failures per key in a sliding window; bounded memory."""

    def __init__(
        self, limit: int, window_s: float, max_keys: int, clock: Callable[[], float]
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str) -> float:
        """0 if ``key`` may try now, else the seconds until it may."""
        times = self._failures.get(key)
        if times is None:
            return 0.0
        now = self.clock()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window_s - now

    def failed(self, key: str) -> None:
        times = self._failures.setdefault(key, deque(maxlen=self.limit))
        times.append(self.clock())
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class HashingPool:
    """A bounded pool for password hashing (see the module docstring)."""

    def __init__(self, limits: SignInLimits) -> None:
        self.limits = limits
        self._executor = ThreadPoolExecutor(limits.hash_threads, thread_name_prefix="qanat-hash")
        self._waiting = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the pool.

        Raises:
            TooManyAttempts: the queue is full.
        """
        if self._waiting >= self.limits.hash_threads + self.limits.hash_queue:
            raise TooManyAttempts(
                "too many sign-ins are being checked right now; try again in a few seconds",
                retry_after_s=2.0,
            )
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class SignInGuard:
    """Throttles by user name and source, and hashes on the bounded pool."""

    def __init__(
        self, limits: SignInLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or SignInLimits()
        lim = self.limits
        self.by_user = FailureLimiter(lim.per_user, lim.window_s, lim.max_keys, clock)
        self.by_source = FailureLimiter(lim.per_source, lim.window_s, lim.max_keys, clock)
        self.pool = HashingPool(lim)

    def check(self, username: str, source: str) -> None:
        """Raise TooManyAttempts when the name or the source is throttled."""
        wait = max(
            self.by_user.retry_after(username.strip().lower()), self.by_source.retry_after(source)
        )
        if wait > 0:
            # A source that keeps trying while throttled keeps counting.
            self.by_source.failed(source)
            raise TooManyAttempts(
                "too many failed sign-ins for this user name or from this address; try again"
                f" in {max(1, round(wait))} s (or ask an admin to set a new password)",
                retry_after_s=wait,
            )

    def failed(self, username: str, source: str) -> None:
        self.by_user.failed(username.strip().lower())
        self.by_source.failed(source)

    def succeeded(self, source: str) -> None:
        self.by_source.clear(source)
