"""UDP across real gateway node processes: a datagram flow on a node without the
connector reaches the node with it (support/clusterbed.py: PostgreSQL, NATS,
portal and ``qanat gateway`` / ``qanat connect`` processes)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.clusterbed import ClusterBed, missing_parts
from support.endpoints import UdpEchoEndpoint
from support.servers import free_port
from support.timing import scaled, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[ClusterBed]:
    why = missing_parts()
    if why is not None:
        if os.environ.get("CI") == "true" or os.geteuid() == 0:
            pytest.fail(f"{why}; `make system-deps` installs it (as root this never skips)")
        pytest.skip(f"{why}; not root, so `make system-deps` could not install it")
    bed = ClusterBed(tmp_path, count=2)
    try:
        bed.start()
        yield bed
    finally:
        bed.close()


def answered(sock: socket.socket, data: bytes) -> bool:
    """Send once; True when the echo of ``data`` comes back within 0.5 s (scaled)."""
    sock.settimeout(scaled(0.5))
    try:
        sock.send(data)
        while True:
            if sock.recv(65536) == b"echo:" + data:
                return True
    except (TimeoutError, ConnectionRefusedError):  # refused: the node not listening yet
        return False


def test_a_udp_flow_on_a_node_without_the_connector_reaches_the_node_with_it(
    bed: ClusterBed,
) -> None:
    udp_port = free_port(kind=socket.SOCK_DGRAM)
    with UdpEchoEndpoint() as target:
        bed.group.start(
            "u0",
            "connect",
            "--id", "u0",
            "--header", f"token: {bed.token}",
            "--max-retry-interval", "0.5s",
            bed.address,
            f"R:{udp_port}:127.0.0.1:{target.port}/udp",
        )  # fmt: skip
        wait_until(lambda: bed.holder("u0"), "u0 connected", 30)
        holder = bed.holder("u0")
        other = next(n for n in bed.nodes if n is not holder)
        socks = []
        try:
            for _ in range(3):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.connect((other.bind, udp_port))
                socks.append(sock)
            for i, sock in enumerate(socks):
                data = f"flow {i} via {other.name}".encode()
                wait_until(lambda s=sock, d=data: answered(s, d), f"answer to flow {i}", 30)
            # Each source keeps getting its own answers.
            for round_ in range(3):
                for i, sock in enumerate(socks):
                    data = f"flow {i} round {round_}".encode()
                    wait_until(lambda s=sock, d=data: answered(s, d), f"flow {i} again", 10)
        finally:
            for sock in socks:
                sock.close()
