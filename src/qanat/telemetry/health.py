"""Liveness and readiness.

``/healthz`` answers 200 while the process can run its event loop: nothing
else is checked, so a load balancer never kills a gateway because its
database blinked. ``/readyz`` runs every registered check (each bounded in
time) and answers 200 only when all pass, 503 with the failing ones otherwise.

The gateway registers "listener" (its front door is serving) and "stages"
(the stage source answers), and with a database behind it "database"
(see ``gateway/serve.py``); the connector registers "tunnel". This module
imports nothing of qanat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

#: A readiness check: returns None when fine, else what is wrong (short text).
Check = Callable[[], Awaitable[str | None]]

#: Longest one check may take before it counts as failed.
DEFAULT_CHECK_TIMEOUT_S = 2.0


class Health:
    """Named readiness checks, run concurrently on every ``/readyz``."""

    def __init__(self, check_timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> None:
        self.check_timeout_s = check_timeout_s
        self.checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        """Add or replace the check called ``name``."""
        self.checks[name] = check

    async def _run(self, check: Check) -> str | None:
        try:
            async with asyncio.timeout(self.check_timeout_s):
                return await check()
        except TimeoutError:
            return f"no answer within {self.check_timeout_s:g}s"
        except Exception as exc:  # a failing check is an answer, not a crash
            return f"{type(exc).__name__}: {exc}"

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check name: "ok" or the problem})."""
        names = list(self.checks)
        results = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
        report = {name: problem or "ok" for name, problem in zip(names, results, strict=True)}
        return all(problem is None for problem in results), report
