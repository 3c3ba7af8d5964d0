"""``qanat connect`` against the Go peer's server mode (like ``chisel server --reverse``).

The Go server runs x/crypto/ssh's server over gorilla/websocket, over TLS
with a test CA: it answers ``none`` with ``password`` and accepts any
password, handles ``config``, listens the reverse remotes on loopback and
opens ``chisel`` channels (TCP, and UDP with gob) toward the connector.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest
from interopbed import Peers

from support.apps import echo_ok, udp_exchange
from support.endpoints import CommandEndpoint, UdpEchoEndpoint
from support.gopeer import SERVER_FINGERPRINT, SERVER_LISTENING
from support.processes import LoggedProcess, qanat_env
from support.servers import free_port
from support.timing import wait_until
from support.tlscerts import TlsFiles, make_tls

ADDRESS_ID = "sg_00000000-0000-4000-8000-000000000000"


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path, ("127.0.0.1", "localhost"))


def go_server(peers: Peers, tls: TlsFiles, *flags: str) -> tuple[LoggedProcess, str, str]:
    """A running Go server; returns it, its https URL and its host key fingerprint."""
    argv = [str(peers.gopeer), "server", "-tls-cert", str(tls.cert), "-tls-key", str(tls.key)]
    server = peers.program("go server", [*argv, *flags])
    fingerprint = server.wait_for(SERVER_FINGERPRINT).group(1)
    listening = server.wait_for(SERVER_LISTENING)
    return server, f"https://{listening.group(2)}:{listening.group(3)}", fingerprint


def qanat_connect(
    peers: Peers, tls: TlsFiles, url: str, remotes: list[str], *options: str
) -> LoggedProcess:
    """``qanat connect`` to the Go server, trusting the test CA."""
    argv = [sys.executable, "-m", "qanat", "connect", "--tls-ca", str(tls.ca)]
    argv += ["--header", "token: any", "--max-retry-interval", "1s", *options]
    return peers.program("qanat connect", [*argv, f"{url}/{ADDRESS_ID}", *remotes], qanat_env())


def serving(port: int) -> bool:
    try:
        return echo_ok(port, b"through the Go server\n")
    except (OSError, AssertionError):
        return False


def test_qanat_connect_serves_tcp_and_udp_through_a_go_server(peers: Peers, tls: TlsFiles) -> None:
    server, url, _ = go_server(peers, tls)
    with CommandEndpoint() as tcp_endpoint, UdpEchoEndpoint() as udp_endpoint:
        tcp_port, udp_port = free_port(), free_port()
        remotes = [
            f"R:{tcp_port}:127.0.0.1:{tcp_endpoint.port}",
            f"R:{udp_port}:127.0.0.1:{udp_endpoint.port}/udp",
        ]
        connector = qanat_connect(peers, tls, url, remotes)
        server.wait_for(rf"tunnel R:{udp_port}=>127\.0\.0\.1:{udp_endpoint.port}/udp listening", 20)
        wait_until(lambda: serving(tcp_port), "TCP through the Go server", 10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as app:
            app.bind(("127.0.0.1", 0))
            answers: list[bytes | None] = []
            wait_until(
                lambda: answers.append(udp_exchange(udp_port, b"dns?", sock=app)) or answers[-1],
                "a UDP answer through the Go server",
                10,
            )
            assert answers[-1] == b"echo:dns?"
        # A stock server does not offer early-open: channels were dialled
        # first and confirmed after (never a marked confirmation).
        mark = connector.mark()
        connector.send(signal.SIGUSR2)
        stats = connector.wait_for(
            r"channels open \d+ / total (\d+) \(confirmed before the dial (\d+), ", start=mark
        )
        assert int(stats.group(1)) >= 1
        assert int(stats.group(2)) == 0
    # Authenticated as Go's client does: empty user, none, then an empty password.
    auth = server.find(r'server: auth user="(.*)" method=(\S+) (\S+)')
    assert [m.groups() for m in auth] == [("", "none", "failed"), ("", "password", "accepted")]
    assert server.find(r"upgrade /sg_\S+\?id=\d{9}&ports=\d+,\d+ from .* token=true")
    assert server.find(r"SSH up, client SSH-chisel-v3-client")
    assert connector.proc.poll() is None


def test_the_go_server_answers_qanat_connects_pings(peers: Peers, tls: TlsFiles) -> None:
    server, url, _ = go_server(peers, tls, "-v")
    with CommandEndpoint() as endpoint:
        port = free_port()
        remotes = [f"R:{port}:127.0.0.1:{endpoint.port}"]
        connector = qanat_connect(peers, tls, url, remotes, "--keepalive", "1s", "-v")
        wait_until(
            lambda: len(connector.find(r"keepalive round trip")) >= 3, "three answered pings", 20
        )
        assert len(server.find(r"session#\d+: ping received")) >= 3
        assert len(server.find(r"SSH up")) == 1  # never reconnected
        assert serving(port)


def test_qanat_connect_pins_the_go_server_fingerprint(peers: Peers, tls: TlsFiles) -> None:
    server, url, fingerprint = go_server(peers, tls)
    with CommandEndpoint() as endpoint:
        port = free_port()
        qanat_connect(
            peers, tls, url, [f"R:{port}:127.0.0.1:{endpoint.port}"], "--fingerprint", fingerprint
        )
        wait_until(lambda: serving(port), "a pinned tunnel through the Go server", 20)
        remotes = [f"R:{free_port()}:127.0.0.1:{endpoint.port}"]
        pin = ["--fingerprint", "A" * 43 + "=", "--max-retry-count", "0"]
        wrong = qanat_connect(peers, tls, url, remotes, *pin)
        assert wrong.wait_exit(20) != 0
        assert "fingerprint" in wrong.output.lower()
        assert "wrong gateway, or its key changed" in wrong.output
    # The wrong pin ends the session before any config, and before user
    # authentication: the pinned connector's two tries are the only ones.
    server.wait_for(r"session#2: handshake failed: ssh: disconnect, reason 9: ")  # not verifiable
    assert [m.group(1) for m in server.find(r"session#(\d+): config")] == ["1"]
    auth = server.find(r'server: auth user="(.*)" method=(\S+) (\S+)')
    assert [m.groups() for m in auth] == [("", "none", "failed"), ("", "password", "accepted")]
