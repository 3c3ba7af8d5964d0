"""Deadlines for tests: one factor for slow machines, polling instead of sleeping.

Every wait in the suite has a deadline and goes through :func:`scaled`, so a
slow CI machine sets ``QANAT_TEST_TIMEOUT_FACTOR=3`` once instead of editing
numbers: the one factor of every test folder (and of bench/failover_harness.py,
which reads the same variable). Waiting for a condition polls it; a sleep is never used to let
something "probably" happen.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

TIMEOUT_FACTOR = float(os.environ.get("QANAT_TEST_TIMEOUT_FACTOR", "1") or "1")
_POLL_S = 0.005


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by QANAT_TEST_TIMEOUT_FACTOR."""
    return seconds * TIMEOUT_FACTOR


async def eventually(predicate: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout_s)
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout_s):g}s waiting for {what}")
        await asyncio.sleep(_POLL_S)


async def until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, step_s: float = 0.05
) -> float:
    """Await ``check()`` until it is true; return the seconds it took, or fail."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + scaled(timeout_s)
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {scaled(timeout_s):g}s: {what}")
        await asyncio.sleep(step_s)
    return loop.time() - start


def wait_until(predicate: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    """Blocking twin of :func:`eventually`, for the process tests."""
    deadline = time.monotonic() + scaled(timeout_s)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout_s):g}s waiting for {what}")
        time.sleep(_POLL_S * 2)
