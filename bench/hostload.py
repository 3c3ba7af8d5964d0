"""How busy the rest of the machine was while the benchmark ran.

On a 2-core machine any other busy process (a test suite, a fuzzer, another
benchmark) takes CPU from the paths under test, and the figures drop with no
other sign. :class:`HostLoad` samples every process's CPU time every few
of seconds and, at the end, says how much CPU went to processes that are not
the benchmark or its descendants. A process counts as the benchmark's if it
was ever seen below it (sshd's connection processes are reparented to init
when sshd stops, and must not turn into "others" then).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import psutil

SAMPLE_S = 5.0


class HostLoad:
    def __init__(self, interval_s: float = SAMPLE_S) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._ours: set[int] = set()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._start = time.time()
        self._wall0 = time.monotonic()
        self._load0 = os.getloadavg()
        self._thread = threading.Thread(target=self._loop, name="hostload", daemon=True)

    def __enter__(self) -> HostLoad:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        me = psutil.Process()
        with contextlib.suppress(psutil.Error):
            self._ours.update(p.pid for p in me.children(recursive=True))
        self._ours.add(me.pid)
        for proc in psutil.process_iter(["cpu_times", "create_time"]):
            times, created = proc.info["cpu_times"], proc.info["create_time"]
            if times is None or created is None:
                continue
            cpu = times.user + times.system
            # A process born during the run is counted from zero.
            self._first.setdefault(proc.pid, cpu if created < self._start else 0.0)
            self._last[proc.pid] = cpu

    def result(self) -> dict[str, Any]:
        wall = time.monotonic() - self._wall0
        others = sum(
            max(0.0, self._last[pid] - self._first[pid])
            for pid in self._last
            if pid not in self._ours
        )
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(wall, 1),
            "others_cpu_s": round(others, 1),
            "others_percent_of_machine": round(100 * others / (wall * cores), 1) if wall else 0.0,
            "loadavg_1m_start": self._load0[0],
            "loadavg_1m_end": os.getloadavg()[0],
        }
