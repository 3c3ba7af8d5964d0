"""A throwaway HAProxy (Debian's ``haproxy``) in TCP mode in front of gateway nodes.

One ``frontend``/``backend`` pair per named port: the connectors' front
door and each stage endpoint port. Every backend lists the nodes' addresses
for that port with a TCP check every 200 ms, ``retries`` and
``option redispatch`` (a refused connection is tried on another node), the
way an operator's L4 balancer is set up (docs/cluster.md). All on loopback.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from support.servers import free_port
from support.timing import scaled


def haproxy_config(
    listens: Mapping[str, int], backends: Mapping[str, Sequence[tuple[str, int]]]
) -> str:
    """The config text: ``listens[name]`` is the balancer's port for ``backends[name]``."""
    lines = [
        "global",
        "    maxconn 4000",
        "defaults",
        "    mode tcp",
        "    timeout connect 1s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout tunnel 1h",
        "    retries 3",
        "    option redispatch 1",
        "    balance roundrobin",
    ]
    for name, port in listens.items():
        lines += [
            f"frontend f_{name}",
            f"    bind 127.0.0.1:{port}",
            f"    default_backend b_{name}",
        ]
        lines += [f"backend b_{name}"]
        for index, (host, node_port) in enumerate(backends[name]):
            lines.append(f"    server n{index} {host}:{node_port} check inter 200ms fall 1 rise 1")
    return "\n".join(lines) + "\n"


class HaProxy:
    def __init__(self, binary: str, listens: Mapping[str, int], config: str) -> None:
        self.binary = binary
        self.listens = dict(listens)
        self.root = Path(tempfile.mkdtemp(prefix="qanat-haproxy-"))
        self.config_path = self.root / "haproxy.cfg"
        self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)], capture_output=True, timeout=30
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config refused: {check.stderr.decode()[-2000:]}")
        log = open(self.root / "log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + scaled(10)
        for port in self.listens.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited:\n{self.log()}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not listen within 10s:\n{self.log()}")
                time.sleep(0.02)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(scaled(10))
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_haproxy(
    backends: Mapping[str, Sequence[tuple[str, int]]],
) -> Iterator[HaProxy]:
    """HAProxy with one free loopback port per backend name (``proxy.listens``)."""
    import pytest

    binary = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if binary is None:
        pytest.skip("haproxy is not installed (Debian package haproxy; make system-deps)")
    listens = {name: free_port() for name in backends}
    proxy = HaProxy(binary, listens, haproxy_config(listens, backends))
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.close()
