"""What an app sends before its channel is open: kept, bounded, delivered whole.

The gateway keeps reading an app connection while the connector is still
opening the channel (since the connect-path work of issue 13), up to
``EARLY_BYTES``; then it stops reading, so a slow or frozen connector makes
the app's sends block instead of filling the gateway's memory. Real
processes: the gateway and connector of the failover harness, with the
connector frozen by SIGSTOP while the app sends.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from failover_harness import Cluster, free_port, scaled, wait_until

PAYLOAD_BYTES = 16 * 1024 * 1024


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, gateway_args=["--channel-open-timeout", "30"]) as c:
        yield c


class DigestEndpoint:
    """Reads each connection to EOF and answers the SHA-256 of what came."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.sock.settimeout(30)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            digest = hashlib.sha256()
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
            conn.sendall(digest.hexdigest().encode())

    def close(self) -> None:
        self.sock.close()


def test_early_bytes_are_bounded_while_the_connector_is_frozen_then_arrive_whole(
    cluster: Cluster,
) -> None:
    endpoint = DigestEndpoint()
    try:
        cluster.start_connector("a", remotes=[cluster.remote(target_port=endpoint.port)])
        cluster.wait_connected("a")
        payload = os.urandom(PAYLOAD_BYTES)
        connector = cluster.connectors["a"]
        connector.signal(signal.SIGSTOP)
        sent = threading.Event()
        answer: list[bytes] = []
        try:
            app = socket.create_connection(("127.0.0.1", cluster.app_port), timeout=60)
            app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)

            def send() -> None:
                app.sendall(payload)
                sent.set()
                app.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := app.recv(256):
                    chunks.append(chunk)
                answer.append(b"".join(chunks))

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            # 16 MiB is far more than the socket buffers on both sides plus
            # EARLY_BYTES: while the channel cannot open, the send must block.
            time.sleep(scaled(1.5))
            assert not sent.is_set(), "the gateway read 16 MiB for a channel not yet open"
        finally:
            connector.signal(signal.SIGCONT)
        sender.join(timeout=scaled(30))
        app.close()
        assert sent.is_set()
        assert answer == [hashlib.sha256(payload).hexdigest().encode()]
        wait_until(lambda: cluster.gateway_failed() == 0, 5, "the gateway's failure count")
    finally:
        endpoint.close()
