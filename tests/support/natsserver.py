"""A throwaway nats-server (Debian's ``nats-server``, JetStream on) for the cluster tests.

Listens on a free loopback port, stores JetStream data in its own temporary
directory (kept across :meth:`NatsServer.restart`, so buckets survive like
on a real server), and is killed when the test ends.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from support.servers import free_port
from support.timing import scaled


def nats_server_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
    )


class NatsServer:
    def __init__(self, binary: str, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.extra = extra
        self.root = Path(tempfile.mkdtemp(prefix="qanat-nats-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.root / "log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                self.binary,
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-js",
                "-sd", str(self.root / "js"),
                "--no_advertise",
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + scaled(10)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen within 10s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(scaled(10))
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_nats(*extra: str) -> Iterator[NatsServer]:
    import pytest

    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (Debian package nats-server; make system-deps)")
    server = NatsServer(binary, extra)
    try:
        server.start()
        yield server
    finally:
        server.close()
