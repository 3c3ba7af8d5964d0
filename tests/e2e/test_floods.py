"""Floods from a peer holding a valid token, against a real gateway process.

Pong flood: a client upgrades with a valid token, then sends WebSocket pings
without ever reading the pongs. The gateway must stop reading from a peer
whose output is backed up, so its memory stays bounded, and another
connector's app traffic keeps flowing meanwhile.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psutil
import pytest

from support.apps import echo_ok
from support.endpoints import CommandEndpoint
from support.processes import ProcessGroup
from support.servers import free_port
from support.stockpeer import outsystemscc_request
from support.timing import scaled

pytestmark = pytest.mark.slow

FLOOD_BYTES = 200 * 1024 * 1024
#: One masked client ping frame with the largest control payload (125 bytes).
PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125


def _upgraded(port: int, address_id: str, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(10))
    sock.sendall(outsystemscc_request(f"127.0.0.1:{port}", f"/{address_id}", token=token))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the head is consumed
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def test_a_pong_flood_from_a_peer_that_never_reads_costs_bounded_memory(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    data, stage_file = tmp_path / "data", tmp_path / "stages.toml"
    address_id, token = procs.add_stage(data, stage_file)
    gateway, gw_port = procs.gateway(data, stage_file)
    port = free_port()
    with CommandEndpoint() as endpoint:
        procs.start(
            "witness",
            "connect",
            "--header",
            f"token: {token}",
            f"http://127.0.0.1:{gw_port}/{address_id}",
            f"R:{port}:127.0.0.1:{endpoint.port}",
        ).wait_for(r"Connected \(latency")
        gateway.wait_for(rf"serving secure-gateway:{port}=>")
        assert echo_ok(port, os.urandom(1 << 20))  # warm up allocations
        gw = psutil.Process(gateway.pid)
        baseline = peak = gw.memory_info().rss

        flood = _upgraded(gw_port, address_id, token)
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.setblocking(False)
        chunk = PING * (1 << 13)  # ~1 MiB of pings
        pending = memoryview(chunk)
        sent, stalled_since = 0, time.monotonic()
        deadline = time.monotonic() + scaled(20)
        witnessed, slowest = 0, 0.0
        try:
            while sent < FLOOD_BYTES and time.monotonic() < deadline:
                try:
                    n = flood.send(pending)
                except BlockingIOError:
                    n = 0
                except ConnectionResetError:
                    raise AssertionError(gateway.output) from None
                if n:
                    sent += n
                    pending = pending[n:] or memoryview(chunk)
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > scaled(1.0):
                    break  # the gateway stopped reading: back-pressure reached us
                else:
                    time.sleep(0.01)
                peak = max(peak, gw.memory_info().rss)
                if sent >= (witnessed + 1) * 2 * 1024 * 1024:
                    witnessed += 1
                    start = time.perf_counter()
                    assert echo_ok(port), "the other connector's app traffic stalled"
                    slowest = max(slowest, time.perf_counter() - start)
            assert echo_ok(port)
            peak = max(peak, gw.memory_info().rss)
        finally:
            flood.close()
    growth = peak - baseline
    print(
        f"pong flood: {sent / 2**20:.1f} MiB sent, gateway RSS +{growth / 2**20:.1f} MiB,"
        f" other tenants' slowest echo {slowest * 1000:.1f} ms ({witnessed} during the flood)"
    )
    assert sent < FLOOD_BYTES, "no back-pressure: all 200 MB of pings were read"
    assert growth < 40 * 1024 * 1024, f"gateway RSS grew by {growth / 2**20:.1f} MiB"
