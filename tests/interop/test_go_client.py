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
import signal
import socket
import sys
from pathlib import Path

import pytest
from interopbed import Bed, Clients, Peers

from support.apps import connection_refused, echo_ok, udp_exchange
from support.endpoints import CommandEndpoint, UdpEchoEndpoint
from support.gopeer import CONNECTED, CONNECTION_ERROR
from support.processes import qanat_env
from support.servers import free_port
from support.timing import wait_until

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "failover_harness.py"
sys.path.insert(0, str(HARNESS.parent))

from failover_harness import LoadGen, summarize  # noqa: E402

#: App connections that may be lost because they were riding on the client
#: at the moment it was killed or frozen (as in tests/e2e/test_failover.py).
MAX_CUT_IN_FLIGHT = 5


def serving(port: int, host: str = "127.0.0.1") -> bool:
    """One ECHO exchange through the gateway's ``port`` (on ``host``) works."""
    try:
        return echo_ok(port, b"through a Go client\n", host)
    except (OSError, AssertionError):
        return False


def test_tcp_remote_through_a_go_client(bed: Bed, clients: Clients) -> None:
    with CommandEndpoint() as endpoint:
        port = free_port()
        mark = bed.up.process.mark()
        client = clients.client([f"R:{port}:127.0.0.1:{endpoint.port}"])
        client.wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port), f"app port {port} through the Go client", 10)
        # Several app connections, each its own chisel channel.
        assert all(echo_ok(port, f"connection {i}\n".encode()) for i in range(5))
    line = bed.up.process.wait_for(r"connector \S+ connected \(version ([^)]*)\)", start=mark)
    assert line.group(1) == "1.11.5-gopeer"
    assert bed.up.process.find(r"tunnel upgrade accepted \(Go-http-client/1\.1\)", mark)


def test_the_gateway_answers_the_go_clients_keepalive_pings(bed: Bed, clients: Clients) -> None:
    """``ping`` every second (chisel's --keepalive), each answered ``pong``;
    a ping unanswered within 2 s would make the client reconnect."""
    with CommandEndpoint() as endpoint:
        port = free_port()
        remote = [f"R:{port}:127.0.0.1:{endpoint.port}"]
        client = clients.client(remote, "-keepalive", "1s", "-ping-timeout", "2s", "-v")
        client.wait_for(CONNECTED, 20)
        wait_until(lambda: len(client.find(r"ping answered")) >= 3, "three answered pings", 15)
        assert {m.group(0) for m in client.find(r'ping answered ok=\S+ "\S*"')} == {
            'ping answered ok=true "pong"'
        }
        assert len(client.find(CONNECTED)) == 1
        assert serving(port)


def test_host_name_remote_is_resolved_on_the_private_side(bed: Bed, clients: Clients) -> None:
    with CommandEndpoint() as endpoint:
        port = free_port()
        clients.client([f"R:{port}:localhost:{endpoint.port}"]).wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port), "a host-name remote through the Go client", 10)


def test_udp_remote_through_a_go_client(bed: Bed, clients: Clients) -> None:
    with UdpEchoEndpoint() as endpoint, CommandEndpoint() as tcp_endpoint:
        port, tcp_port = free_port(), free_port()
        remotes = [
            f"R:{port}:127.0.0.1:{endpoint.port}/udp",
            f"R:{tcp_port}:127.0.0.1:{tcp_endpoint.port}",
        ]
        client = clients.client(remotes)
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


def test_outsystemscc_style_client(bed: Bed, clients: Clients) -> None:
    """Address GET first, ``?id=<9 digits>&ports=...``, CloudConnector user agent."""
    with CommandEndpoint() as endpoint:
        port = free_port()
        mark = bed.up.process.mark()
        clients.client([f"R:{port}:127.0.0.1:{endpoint.port}"], "-outsystemscc").wait_for(
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
def test_any_user_name_and_method_mix_is_accepted(
    bed: Bed, clients: Clients, flags: list[str]
) -> None:
    with CommandEndpoint() as endpoint:
        port = free_port()
        clients.client([f"R:{port}:127.0.0.1:{endpoint.port}"], *flags).wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port), f"a tunnel authenticated with {flags}", 10)


def test_wrong_token_is_refused_at_the_upgrade_and_logged_in_words(
    bed: Bed, clients: Clients
) -> None:
    port = free_port()
    mark = bed.up.process.mark()
    client = clients.client(
        [f"R:{port}:127.0.0.1:9"], "-max-retry-count", "0", token="not-the-token"
    )
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


# -- several Go clients, the gateway's life, the stage's life ------------------------


def go_clients_on_the_port(bed: Bed, port: int, count: int, start: int) -> bool:
    """The gateway logged ``count`` tunnels serving ``port`` since ``start``."""
    return len(bed.up.process.find(rf"serving .*secure-gateway:{port}=>", start)) >= count


def greeting_endpoint(peers: Peers) -> int:
    """bench/failover_harness.py's endpoint (greeting, then one answer) in its own process."""
    port = free_port()
    argv = [sys.executable, str(HARNESS), "endpoint", str(port)]
    peers.program("greeting endpoint", argv, qanat_env())
    wait_until(lambda: not connection_refused(port), "the greeting endpoint", 10)
    return port


@pytest.mark.slow
def test_two_go_clients_one_killed_one_frozen_under_load_fail_no_app_connection(
    bed: Bed, clients: Clients, peers: Peers
) -> None:
    """Two Go clients serve one port; a stream of new app connections runs while
    one is SIGKILLed (its TCP connection closes: the gateway drops the tunnel)
    and, with a third client in, another is SIGSTOPped (silent: the gateway's
    open timeout and stall detection move new connections to the other one).
    """
    stage = bed.new_stage("pool")  # its own flap key: Go clients on one host share one
    endpoint = greeting_endpoint(peers)
    port = free_port()
    remote = [f"R:{port}:127.0.0.1:{endpoint}"]
    mark = bed.up.process.mark()
    a = clients.client(remote, stage=stage, name="go a")
    b = clients.client(remote, stage=stage, name="go b")
    wait_until(lambda: go_clients_on_the_port(bed, port, 2, mark), "two Go clients serving", 20)
    load = LoadGen(port, rate=100, count=900, host=stage.bind).start()
    try:
        wait_until(lambda: len(load.outcomes) >= 150, "app connections through both", 20)
        a.send(signal.SIGKILL)
        bed.up.process.wait_for(r"tunnel closed", 10, mark)
        mark = bed.up.process.mark()
        clients.client(remote, stage=stage, name="go c")
        wait_until(lambda: go_clients_on_the_port(bed, port, 1, mark), "the third client", 20)
        wait_until(lambda: len(load.outcomes) >= 450, "app connections after the kill", 20)
        b.send(signal.SIGSTOP)
        outcomes = load.join()
    finally:
        load.stop()
        b.send(signal.SIGCONT)
    failed_at_gateway = len(bed.up.process.find(rf"port={port}\] app connection from "))
    total = summarize(outcomes, gateway_failed=failed_at_gateway)
    assert total.connections == 900
    assert total.failed == 0, total
    assert total.cut <= MAX_CUT_IN_FLIGHT, total


@pytest.mark.slow
def test_go_client_comes_back_by_itself_after_a_gateway_restart(bed: Bed, clients: Clients) -> None:
    stage = bed.new_stage("restart")
    with CommandEndpoint() as endpoint:
        port = free_port()
        client = clients.client([f"R:{port}:127.0.0.1:{endpoint.port}"], stage=stage)
        client.wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port, stage.bind), "the tunnel before the restart", 10)
        before = len(client.find(CONNECTED))
        bed.up.restart()
        wait_until(lambda: len(client.find(CONNECTED)) > before, "the Go client reconnecting", 30)
        wait_until(lambda: serving(port, stage.bind), "the tunnel after the restart", 10)
        assert client.proc.poll() is None


@pytest.mark.slow
def test_renewal_keeps_the_go_tunnel_and_refuses_the_old_token_afterwards(
    bed: Bed, clients: Clients
) -> None:
    stage = bed.new_stage("renew")
    with CommandEndpoint() as endpoint:
        port = free_port()
        remote = [f"R:{port}:127.0.0.1:{endpoint.port}"]
        first = clients.client(remote, stage=stage, name="go (old token)")
        first.wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port, stage.bind), "the tunnel before the renewal", 10)
        assert bed.up.token_status(stage, stage.token) == 400  # the probe: token accepted
        renewed = bed.up.renew(stage)
        assert renewed.token != stage.token
        # The established tunnel keeps working through the renewal...
        wait_until(
            lambda: bed.up.token_status(stage, stage.token) == 401, "the renewal applied", 10
        )
        assert all(serving(port, stage.bind) for _ in range(3))
        assert len(first.find(CONNECTED)) == 1
        # ... but the old token opens no new one.
        first.send(signal.SIGKILL)
        again = clients.client(
            remote, "-max-retry-count", "0", stage=stage, name="go (old token, restarted)"
        )
        error = again.wait_for(CONNECTION_ERROR, 20)
        assert "HTTP 401: token rejected: this token was renewed" in error.group(1)
        assert again.wait_exit(20) == 1
        clients.client(remote, stage=renewed, name="go (new token)").wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port, stage.bind), "the tunnel with the new token", 10)


@pytest.mark.slow
def test_deactivation_closes_the_go_tunnel_and_reactivation_brings_it_back(
    bed: Bed, clients: Clients
) -> None:
    stage = bed.new_stage("toggle")
    with CommandEndpoint() as endpoint:
        port = free_port()
        client = clients.client([f"R:{port}:127.0.0.1:{endpoint.port}"], stage=stage)
        client.wait_for(CONNECTED, 20)
        wait_until(lambda: serving(port, stage.bind), "the tunnel while active", 10)
        mark = client.mark()
        bed.up.deactivate(stage)
        wait_until(
            lambda: connection_refused(port, stage.bind), "the app port closed on deactivation", 10
        )
        error = client.wait_for(CONNECTION_ERROR, 20, mark)
        # It keeps retrying and is told why.
        client.wait_for(r"HTTP 403: private gateway of this stage is inactive", 20, mark)
        assert error
        reactivated = bed.up.activate(stage.org)
        assert reactivated.address == stage.address
        connected = len(client.find(CONNECTED))
        wait_until(lambda: len(client.find(CONNECTED)) > connected, "the Go client back", 20)
        wait_until(lambda: serving(port, stage.bind), "the tunnel after reactivation", 10)
