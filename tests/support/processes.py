"""qanat (and peers) as real processes: start, read logs, signal, and always clean up.

Each process runs ``sys.executable -m qanat ...`` (or any other program, such
as the Go peer) in its own session (process group); :class:`ProcessGroup`
kills every group it started when the test ends, whatever happened, and
checks that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from support.timing import scaled

_ADDRESS = re.compile(r"^address: http://[^/]+/(sg_[0-9a-f-]{36})$", re.M)
_TOKEN = re.compile(r"^token:\s+(\S+)\s", re.M)


def qanat_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


class LoggedProcess:
    """One running program; its combined output is collected by a thread."""

    def __init__(
        self, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=env if env is not None else qanat_env(),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def mark(self) -> int:
        """Position in the output; pass to :meth:`wait_for` to look only after it."""
        with self._cond:
            return len(self.lines)

    def find(self, pattern: str, start: int = 0) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._cond:
            return [m for line in self.lines[start:] if (m := regex.search(line))]

    def wait_for(self, pattern: str, timeout_s: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait for an output line matching ``pattern`` (after line ``start``)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + scaled(timeout_s)
        index = start
        with self._cond:
            while True:
                for line in self.lines[index:]:
                    match = regex.search(line)
                    if match:
                        return match
                index = max(index, len(self.lines))
                left = deadline - time.monotonic()
                exited = self.proc.poll() is not None and not self._reader.is_alive()
                if left <= 0 or exited:
                    why = "exited" if exited else f"no match within {scaled(timeout_s):g}s"
                    raise AssertionError(
                        f"{self.name}: {why} waiting for /{pattern}/; output:\n" + self.output
                    )
                self._cond.wait(min(left, 0.1))

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        try:
            code = self.proc.wait(scaled(timeout_s))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running {scaled(timeout_s):g}s later; output:\n" + self.output
            ) from None
        self._reader.join(scaled(5))
        return code

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGCONT)  # a stopped process cannot die
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(scaled(10))
        self._reader.join(scaled(5))
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class QanatProcess(LoggedProcess):
    """One running qanat command."""

    def __init__(self, name: str, args: list[str], cwd: Path) -> None:
        super().__init__(name, [sys.executable, "-m", "qanat", *args], cwd)
        self.args = args


class ProcessGroup:
    """Starts qanat processes for one test and kills them all at the end."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[LoggedProcess] = []

    def start(self, name: str, *args: str) -> QanatProcess:
        process = QanatProcess(name, list(args), self.cwd)
        self.started.append(process)
        return process

    def start_program(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> LoggedProcess:
        """Start another program (``argv[0]`` a path) the same way."""
        process = LoggedProcess(name, argv, self.cwd, env)
        self.started.append(process)
        return process

    def run(self, *args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run a short qanat command to completion."""
        return subprocess.run(
            [sys.executable, "-m", "qanat", *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=qanat_env(),
            timeout=scaled(timeout_s),
            check=False,
        )

    def add_stage(self, data_dir: Path, stage_file: Path) -> tuple[str, str]:
        """``qanat gateway add-stage``; returns (address id, token) from its output."""
        done = self.run(
            "gateway",
            "add-stage",
            "--name",
            "dev",
            "--data-dir",
            str(data_dir),
            "--stage-file",
            str(stage_file),
            "--ports",
            "1024-65535",
        )
        assert done.returncode == 0, done.stderr
        address = _ADDRESS.search(done.stdout)
        token = _TOKEN.search(done.stdout)
        assert address, done.stdout
        assert token, done.stdout
        return address.group(1), token.group(1)

    def gateway(self, data_dir: Path, stage_file: Path, *extra: str) -> tuple[QanatProcess, int]:
        """A running ``qanat gateway`` on 127.0.0.1 port 0; returns it and its port."""
        process = self.start(
            "gateway",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--stage-file",
            str(stage_file),
            *extra,
        )
        match = process.wait_for(r"listening on http://127\.0\.0\.1:(\d+)")
        return process, int(match.group(1))

    def close(self) -> None:
        for process in self.started:
            process.kill_group()
