"""Failed token attempts against a real gateway process.

Observed: the limiter was keyed by source address only, so after 20
failures *valid* tokens from that address were refused too (an attacker at
4 tries/s kept a real connector out), one WARNING was logged per refusal,
and behind a TLS-terminating proxy everyone shared one bucket while
``/metrics`` answered internet clients.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from support.apps import echo_ok
from support.endpoints import CommandEndpoint
from support.processes import ProcessGroup
from support.servers import free_port
from support.stockpeer import outsystemscc_request
from support.timing import scaled

pytestmark = pytest.mark.slow


def _status(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def _upgrade(port: int, address_id: str, token: str, forwarded: str = "") -> bytes:
    request = outsystemscc_request(f"127.0.0.1:{port}", f"/{address_id}", token=token)
    if forwarded:
        request = request.replace(b"\r\n\r\n", f"\r\nX-Forwarded-For: {forwarded}\r\n\r\n".encode())
    return request


def test_failures_never_block_a_valid_token_and_are_summarised(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    data, stage_file = tmp_path / "data", tmp_path / "stages.toml"
    address_id, token = procs.add_stage(data, stage_file)
    gateway, gw_port = procs.gateway(data, stage_file)
    statuses = [_status(gw_port, _upgrade(gw_port, address_id, "wrong")) for _ in range(60)]
    assert statuses[:20] == [401] * 20
    assert set(statuses[20:]) == {429}
    # The real connector, from the same address, right after: let in.
    port = free_port()
    with CommandEndpoint() as endpoint:
        procs.start(
            "connector",
            "connect",
            "--header",
            f"token: {token}",
            f"http://127.0.0.1:{gw_port}/{address_id}",
            f"R:{port}:127.0.0.1:{endpoint.port}",
        ).wait_for(r"Connected \(latency")
        gateway.wait_for(rf"serving secure-gateway:{port}=>")
        assert echo_ok(port)
    # One line for the first refusal of each kind, then a summary per interval.
    gateway.wait_for(r"refused \d+ tunnel attempts in the last", timeout_s=20)
    assert len(gateway.find(r"tunnel refused|rate-limited")) <= 2, gateway.output


def test_forwarded_for_counts_only_from_trusted_proxies(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    data, stage_file = tmp_path / "data", tmp_path / "stages.toml"
    address_id, _ = procs.add_stage(data, stage_file)
    gateway, gw_port = procs.gateway(data, stage_file, "--trusted-proxy", "127.0.0.1/32")
    # Behind the proxy each client has its own bucket ...
    first = [_status(gw_port, _upgrade(gw_port, address_id, "x", "203.0.113.7")) for _ in range(25)]
    assert first[:20] == [401] * 20
    assert set(first[20:]) == {429}
    assert _status(gw_port, _upgrade(gw_port, address_id, "x", "203.0.113.8")) == 401
    # ... and /metrics is checked against the client, not the proxy.
    metrics = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    assert _status(gw_port, metrics + b"X-Forwarded-For: 203.0.113.7\r\n\r\n") == 403
    assert _status(gw_port, metrics + b"\r\n") == 200
    gateway.wait_for(r"203\.0\.113\.7")


def test_forwarded_for_from_anyone_else_is_ignored(tmp_path: Path, procs: ProcessGroup) -> None:
    data, stage_file = tmp_path / "data", tmp_path / "stages.toml"
    address_id, _ = procs.add_stage(data, stage_file)
    _, gw_port = procs.gateway(data, stage_file)
    spoofed = [
        _status(gw_port, _upgrade(gw_port, address_id, "x", f"198.51.100.{i}")) for i in range(25)
    ]
    assert set(spoofed[20:]) == {429}  # one bucket: the header proves nothing
