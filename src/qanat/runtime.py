"""Event loop and task ownership helpers shared by the long-running commands."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("qanat.runtime")


#: glibc's mallopt() parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, not from a mapping of their own.
MMAP_THRESHOLD_BYTES = 1 << 20
#: Free memory at the top of the heap kept for reuse instead of returned.
TRIM_THRESHOLD_BYTES = 4 << 20
#: Set by an operator, these take precedence over tune_malloc().
MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc() -> str:
    """Fix glibc's malloc thresholds for a process that moves bytes.

    Every read of a tunnel or an app connection makes a ``bytes`` of up to
    256 KiB that lives a few microseconds. With glibc's defaults (a
    threshold of 128 KiB that moves with what was freed last) such blocks
    went to ``mmap``/``munmap``, or grew and trimmed the heap with ``brk``,
    once or twice per read; which of the two, and how often, depended on the
    process' history, so a stream ran at 300 or 600 MB/s from one start to
    the next (docs/benchmarks.md). Fixed thresholds keep them in the heap:
    up to :data:`TRIM_THRESHOLD_BYTES` of freed memory stays mapped for the
    next read.

    Skipped where the operator set glibc's own variables (:data:`MALLOC_ENV`)
    and where the C library is not glibc. Returns what was done, for the
    debug log.
    """
    import os

    if any(name in os.environ for name in MALLOC_ENV):
        return "malloc: left as the environment sets it"
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return "malloc: not glibc, left alone"
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(
            M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES
        )
    except (OSError, AttributeError) as exc:  # pragma: no cover - no libc to load
        return f"malloc: left alone ({exc})"
    if not ok:  # pragma: no cover - glibc accepts both values
        return "malloc: mallopt refused the thresholds"
    return (
        f"malloc: mmap threshold {MMAP_THRESHOLD_BYTES >> 10} KiB, "
        f"trim threshold {TRIM_THRESHOLD_BYTES >> 10} KiB"
    )


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when available, else the default loop.

    glibc's malloc is tuned first (:func:`tune_malloc`).
    """
    log.debug("%s", tune_malloc())
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)


class TaskOwner:
    """Keeps references to background tasks and cancels them on close.

    Tasks are never created bare: a dropped reference lets the loop collect a
    running task, and an unobserved exception disappears.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.name, task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        """Refuse new tasks and cancel every running one, without waiting.

        For owners that end inside a callback, where nothing can be awaited.
        """
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Cancel every task and wait for them (bounded)."""
        tasks = list(self._tasks)
        self.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
