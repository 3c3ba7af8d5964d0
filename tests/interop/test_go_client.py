"""Go clients (chisel's stack: x/crypto/ssh + gorilla/websocket) against a real ``qanat up``.

The peer connects exactly as chisel's client does (PROTOCOL.md sections
2-5): subprotocol ``chisel-v3``, the ``token`` header, version
``SSH-chisel-v3-client``, an empty user name with ``none`` then ``password``
(empty), the ``config`` JSON, keepalive pings, ``chisel`` channels dialled
on the private side, UDP as gob ``udpPacket`` values; it retries by itself.
HTTPS with the development certificate of ``qanat up``, trusted through
``SSL_CERT_FILE``.
"""

from __future__ import annotations

import re
import socket

import pytest

from conftest import Bed, Peers
from support.apps import echo_ok, udp_exchange
from support.endpoints import CommandEndpoint, UdpEchoEndpoint
from support.gopeer import CONNECTED, CONNECTION_ERROR
from support.servers import free_port
from support.timing import wait_until


def serving(port: int) -> bool:
    """One ECHO exchange through the gateway's ``port`` works."""
    try:
        return echo_ok(port, b"through a Go client\n")
    except (OSError, AssertionError):
        return False


def test_tcp_remote_through_a_go_client(bed: Bed, peers: Peers) -> None:
    with CommandEndpoint() as endpoint:
        port = free_port()
        mark = bed.up.process.mark()
        client = peers.client([f"R:{port}:127.0.0.1:{endpoint.port}"])
        client.wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port), f"app port {port} through the Go client", 10)
        # Several app connections, each its own chisel channel.
        assert all(echo_ok(port, f"connection {i}\n".encode()) for i in range(5))
    line = bed.up.process.wait_for(r"connector \S+ connected \(version ([^)]*)\)", start=mark)
    assert line.group(1) == "1.11.5-gopeer"
    assert bed.up.process.find(r"tunnel upgrade accepted \(Go-http-client/1\.1\)", mark)


def test_host_name_remote_is_resolved_on_the_private_side(bed: Bed, peers: Peers) -> None:
    with CommandEndpoint() as endpoint:
        port = free_port()
        peers.client([f"R:{port}:localhost:{endpoint.port}"]).wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port), "a host-name remote through the Go client", 10)


def test_udp_remote_through_a_go_client(bed: Bed, peers: Peers) -> None:
    with UdpEchoEndpoint() as endpoint, CommandEndpoint() as tcp_endpoint:
        port, tcp_port = free_port(), free_port()
        remotes = [
            f"R:{port}:127.0.0.1:{endpoint.port}/udp",
            f"R:{tcp_port}:127.0.0.1:{tcp_endpoint.port}",
        ]
        client = peers.client(remotes)
        client.wait_for(CONNECTED, 20)
        wait_until(lambda: serving(tcp_port), "the TCP remote beside the UDP one", 10)
        # Two app sources: two flows, each answered at its own address.
        apps = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for app in apps:
                app.bind(("127.0.0.1", 0))
            for i, app in enumerate(apps):
                payload = f"datagram from app {i}".encode()
                got: list[bytes | None] = []
                wait_until(
                    lambda app=app, payload=payload, got=got: (
                        got.append(udp_exchange(port, payload, sock=app)) or got[-1]
                    ),
                    f"UDP answer for app {i}",
                    10,
                )
                assert got[-1] == b"echo:" + payload
            big = bytes(range(256)) * 32  # 8 KiB, under chisel's 9012-byte limit
            assert udp_exchange(port, big, sock=apps[0]) in (b"echo:" + big, None)
        finally:
            for app in apps:
                app.close()


def test_outsystemscc_style_client(bed: Bed, peers: Peers) -> None:
    """Address GET first, ``?id=<9 digits>&ports=...``, CloudConnector user agent."""
    with CommandEndpoint() as endpoint:
        port = free_port()
        mark = bed.up.process.mark()
        peers.client([f"R:{port}:127.0.0.1:{endpoint.port}"], "-outsystemscc").wait_for(
            CONNECTED, 20
        )
        wait_until(lambda: serving(port), "the outsystemscc-style tunnel", 10)
    assert bed.up.process.find(r"tunnel upgrade accepted \(CloudConnector/2\.0\.11\)", mark)
    line = bed.up.process.wait_for(r"connector \S+ connected \(version ([^)]*)\)", start=mark)
    assert line.group(1) == "0.0.0-src"


@pytest.mark.parametrize(
    "flags",
    [
        ["-auth", "chisel:secret"],  # chisel client --auth chisel:secret
        ["-auth", ":secret"],  # empty user, a password
        ["-methods", "keyboard-interactive"],  # another method after none
        ["-methods", "keyboard-interactive,password"],
    ],
    ids=["user+password", "empty-user+password", "kbd-interactive", "kbd-then-password"],
)
def test_any_user_name_and_method_mix_is_accepted(bed: Bed, peers: Peers, flags: list[str]) -> None:
    with CommandEndpoint() as endpoint:
        port = free_port()
        peers.client([f"R:{port}:127.0.0.1:{endpoint.port}"], *flags).wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port), f"a tunnel authenticated with {flags}", 10)


def test_wrong_token_is_refused_at_the_upgrade_and_logged_in_words(bed: Bed, peers: Peers) -> None:
    port = free_port()
    mark = bed.up.process.mark()
    client = peers.client([f"R:{port}:127.0.0.1:9"], "-max-retry-count", "0", token="not-the-token")
    error = client.wait_for(CONNECTION_ERROR, 20)
    assert client.wait_exit(20) == 1
    assert error.group(1) == (
        "websocket: bad handshake: HTTP 401: token rejected: check the token header"
    )
    line = bed.up.process.wait_for(r"tunnel refused for address .*", start=mark)
    assert re.search(
        rf"127\.0\.0\.1:\d+: tunnel refused for address {bed.stage.address_id}: "
        r"wrong token \(not a token of this address\)$",
        line.string,
    ), line.string
    assert "not-the-token" not in bed.up.process.output
