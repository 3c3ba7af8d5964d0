"""Child processes of the benchmark, owned so that none outlives it.

Every process is started in its own session (so its process group id is its
pid) and registered in a :class:`ProcessSet`. ``ProcessSet.stop_all`` sends
SIGTERM to each group, waits with a deadline, then SIGKILLs what is left; the
benchmark calls it in a ``finally`` block, and also from SIGTERM/SIGINT and
the overall watchdog, so an error anywhere still leaves nothing running.

A reader thread per process keeps draining its merged stdout/stderr into a
bounded buffer: a chatty child can never block on a full pipe, and the last
lines are at hand to explain a failure.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

#: How many output lines of each child are kept for error messages.
TAIL_LINES = 40


class Child:
    """One started process: its Popen, its output tail, a readiness wait."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.popen = popen
        self._lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._cond = threading.Condition()
        self._seen = 0
        self._eof = False
        self._reader = threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            with self._cond:
                self._lines.append(line)
                self._seen += 1
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_line(self, needle: str, timeout_s: float) -> str:
        """Wait until an output line contains ``needle``; return that line.

        Raises:
            RuntimeError: the process exited or the deadline passed first; the
                message carries the last lines of output.
        """
        deadline = time.monotonic() + timeout_s
        checked = 0
        with self._cond:
            while True:
                # Lines already rotated out of the deque were checked earlier.
                lines = list(self._lines)
                new = self._seen - checked
                for line in lines[max(0, len(lines) - new) :]:
                    if needle in line:
                        return line
                checked = self._seen
                if self._eof:
                    raise RuntimeError(
                        f"{self.name} exited before saying {needle!r}: {self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.name} did not say {needle!r} in {timeout_s:.0f}s")
                self._cond.wait(min(left, 0.2))

    def tail(self, lines: int = 5) -> str:
        with self._cond:
            last = list(self._lines)[-lines:]
        code = self.popen.poll()
        state = f"exit code {code}" if code is not None else "still running"
        return f"[{state}] " + " | ".join(last) if last else f"[{state}] (no output)"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its live descendants."""
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                exact = _schedstat_seconds(proc.pid)
                if exact is None:
                    times = proc.cpu_times()
                    exact = times.user + times.system
                total += exact
        return total

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        """Resident memory of the process and all its descendants."""
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total


def _schedstat_seconds(pid: int) -> float | None:
    """On-CPU time of all live threads of ``pid``, in ns resolution.

    ``/proc/PID/task/TID/schedstat`` counts the scheduler's runtime in
    nanoseconds; psutil's user + system times count 10 ms ticks, too coarse
    for the ~0.1 s a quick run's round trips cost. None without schedstat.
    """
    try:
        tasks = [t.path for t in os.scandir(f"/proc/{pid}/task")]
    except OSError:
        return None
    total = 0
    for task in tasks:
        try:
            with open(f"{task}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except (OSError, ValueError, IndexError):
            return None
    return total / 1e9


class ProcessSet:
    """Starts children in their own process groups and stops them all."""

    def __init__(self) -> None:
        self._children: list[Child] = []
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        popen = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        child = Child(name, popen)
        with self._lock:
            self._children.append(child)
        return child

    def stop(self, child: Child, grace_s: float = 3.0) -> None:
        """SIGTERM the child's group, wait up to ``grace_s``, then SIGKILL.

        Descendants that left the group (sshd puts each connection in a
        session of its own, and its pty sessions in yet another) are found
        beforehand and ended the same way.
        """
        try:
            strays = psutil.Process(child.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            strays = []
        _signal_group(child.pid, signal.SIGTERM)
        try:
            child.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=grace_s)
        # Whatever the leader left behind in its group goes too.
        _signal_group(child.pid, signal.SIGKILL)
        _end_processes(strays, grace_s)
        with self._lock:
            if child in self._children:
                self._children.remove(child)

    def stop_all(self) -> None:
        with self._lock:
            children = list(reversed(self._children))
        for child in children:
            self.stop(child)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _end_processes(procs: list[psutil.Process], grace_s: float) -> None:
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.terminate()  # psutil checks the pid was not reused
            alive.append(proc)
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host`` (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
