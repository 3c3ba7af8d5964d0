"""Shared test setup: coroutine tests run on a fresh uvloop loop each.

``async def test_...`` functions are run here rather than by a plugin: every
test gets a new event loop of the kind the CLI uses (uvloop), a deadline
(scaled by QANAT_TEST_TIMEOUT_FACTOR), and two strict checks afterwards:

- nothing reached the loop's exception handler ("Exception in callback",
  "Task exception was never retrieved", ...): those are bugs that asyncio
  would otherwise only log;
- no task the test started is still running: everything the code under test
  spawned must have been cancelled or finished by its owner's ``close()``.

Helpers shared by the test modules live in ``tests/support``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from support.timing import scaled

#: Deadline of one coroutine test, before scaling.
ASYNC_TEST_TIMEOUT_S = 60.0


def _run_test_coroutine(coro: Coroutine[Any, Any, Any], name: str) -> None:
    problems: list[str] = []

    def on_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        problems.append(f"{context.get('message')}: {exc!r}" if exc else str(context["message"]))
        loop.default_exception_handler(context)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(on_exception)
        baseline = asyncio.all_tasks()
        deadline = asyncio.timeout(scaled(ASYNC_TEST_TIMEOUT_S))
        try:
            async with deadline:
                await coro
        except TimeoutError:
            if not deadline.expired():
                raise
            pytest.fail(f"{name} did not finish within {scaled(ASYNC_TEST_TIMEOUT_S):g}s")
        # Owners close their tasks asynchronously; give them a moment.
        current = asyncio.current_task()
        deadline = asyncio.get_running_loop().time() + scaled(2.0)
        left: set[asyncio.Task[Any]] = set()
        while asyncio.get_running_loop().time() < deadline:
            left = asyncio.all_tasks() - baseline - {current}  # type: ignore[operator]
            if not left:
                break
            await asyncio.sleep(0.01)
        if left:
            names = sorted(f"{t.get_name()} ({t.get_coro()})" for t in left)
            pytest.fail(f"tasks left running after the test: {names}")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    if problems:
        pytest.fail("event loop reported errors:\n" + "\n".join(problems))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    _run_test_coroutine(pyfuncitem.obj(**kwargs), pyfuncitem.nodeid)
    return True


@pytest.fixture(scope="session")
def gopeer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go interop peer (tests/interop/gopeer), built once per session;
    skips with the reason when Go or its Debian source packages are missing."""
    from support import gopeer as go

    reason = go.missing()
    if reason is not None:
        pytest.skip(reason)
    return go.build(tmp_path_factory.mktemp("gopeer"))
