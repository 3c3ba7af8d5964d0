"""Operability tests: ``async def`` tests run here on a fresh uvloop loop, with a deadline.

A root conftest (if one is added later) may run coroutine tests itself; this
hook then simply never gets called, as both do the same job.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine
from typing import Any

import pytest
import uvloop
from opstools import scaled

#: Deadline of one coroutine test, before scaling.
ASYNC_TEST_TIMEOUT_S = 30.0


def _run(coro: Coroutine[Any, Any, Any], name: str) -> None:
    async def main() -> None:
        try:
            async with asyncio.timeout(scaled(ASYNC_TEST_TIMEOUT_S)):
                await coro
        except TimeoutError:
            pytest.fail(f"{name} did not finish within {scaled(ASYNC_TEST_TIMEOUT_S):g}s")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@pytest.hookimpl()
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    _run(pyfuncitem.obj(**kwargs), pyfuncitem.nodeid)
    return True
