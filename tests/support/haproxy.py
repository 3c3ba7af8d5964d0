"""A throwaway HAProxy (Debian's ``haproxy``) in TCP mode in front of gateway nodes.

One ``frontend``/``backend`` pair per named port: the connectors' front
door and each stage endpoint port. Every backend lists the nodes' addresses
for that port with a TCP check every 200 ms, ``retries`` and
``option redispatch`` (a refused connection is tried on another node), the
way an operator's L4 balancer is set up (docs/cluster.md); with ``checks``
a backend follows each node's ``/readyz`` (503 while it drains) instead of a
TCP check. All on loopback.
"""

from __future__ import annotations

import contextlib
import os
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
    listens: Mapping[str, int],
    backends: Mapping[str, Sequence[tuple[str, int]]],
    checks: Mapping[str, Sequence[tuple[str, int]]] | None = None,
) -> str:
    """The config text: ``listens[name]`` is the balancer's port for ``backends[name]``.

    ``checks[name][i]``: where server *i* of that backend is health-checked
    with ``GET /readyz`` (a node's front door); without it, a TCP check of
    the server itself.
    """
    lines = [
        "global",
        "    maxconn 4000",
        "    log stdout format raw local0 notice",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        "    option dontlog-normal",
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
        lines += [f"backend b_{name}", "    timeout check 1s"]
        probes = (checks or {}).get(name)
        if probes:
            lines.append("    option httpchk GET /readyz")
        for index, (host, node_port) in enumerate(backends[name]):
            where = f" addr {probes[index][0]} port {probes[index][1]}" if probes else ""
            # fall 2: one slow check on a busy machine does not take a node out.
            lines.append(
                f"    server n{index} {host}:{node_port} check{where} inter 200ms fall 2 rise 1"
            )
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
        keep = os.environ.get("QANAT_CLUSTER_LOGS")
        if keep and (self.root / "log").exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(self.root / "log", Path(keep) / "haproxy.log")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(scaled(10))
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_haproxy(
    backends: Mapping[str, Sequence[tuple[str, int]]],
    checks: Mapping[str, Sequence[tuple[str, int]]] | None = None,
) -> Iterator[HaProxy]:
    """HAProxy with one free loopback port per backend name (``proxy.listens``)."""
    import pytest

    binary = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if binary is None:
        pytest.skip("haproxy is not installed (Debian package haproxy; make system-deps)")
    listens = {name: free_port() for name in backends}
    proxy = HaProxy(binary, listens, haproxy_config(listens, backends, checks))
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.close()
