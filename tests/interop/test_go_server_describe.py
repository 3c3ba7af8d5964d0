"""``qanat connect --describe`` against the Go peer's server (like ``chisel server --reverse``).

qanat's own extras must stay invisible to a stock server: with
``--describe``/``--openapi`` the connector still only sends ``config`` and
pings, because the stock 101 answer lists no ``describe`` feature.
"""

from __future__ import annotations

from pathlib import Path

from support.apps import echo_ok
from support.endpoints import CommandEndpoint
from support.gopeer import SERVER_LISTENING, peer_env
from support.processes import ProcessGroup
from support.servers import free_port
from support.timing import wait_until


def test_connector_with_descriptions_talks_to_a_stock_server(gopeer: Path, tmp_path: Path) -> None:
    spec = tmp_path / "orders.yaml"
    spec.write_text("openapi: 3.0.0\ninfo: {title: Orders, version: 1}\npaths: {}\n")
    group = ProcessGroup(tmp_path)
    try:
        server = group.start_program(
            "go server", [str(gopeer), "server", "-keepalive", "1s"], peer_env()
        )
        listening = server.wait_for(SERVER_LISTENING, 20)
        with CommandEndpoint() as endpoint:
            port = free_port()
            connect = group.start(
                "connect",
                "connect",
                "-v",
                "--keepalive", "1s",
                "--header", "token: anything",
                "--describe", f"{port}=Orders API",
                "--openapi", f"{port}={spec}",
                f"http://{listening.group(2)}:{listening.group(3)}/sg_any",
                f"R:{port}:127.0.0.1:{endpoint.port}",
            )  # fmt: skip
            server.wait_for(r"server: session#1: config ", 20)

            def serving() -> bool:
                try:
                    return echo_ok(port, b"through a stock server\n")
                except (OSError, AssertionError):
                    return False

            wait_until(serving, "the app port through the Go server", 10)
            # The connector's pings are answered after config (no reply was
            # swallowed by an unanswered request of ours): two in a row.
            mark = connect.mark()
            first = connect.wait_for(r"keepalive round trip", 10, start=mark)
            assert first
            connect.wait_for(r"keepalive round trip", 10, start=connect.mark())
            assert echo_ok(port, b"still served\n")
            assert not server.find(r"session#2")
        assert not server.find(r"refused \(unknown\)"), server.output
        assert "describe@qanat" not in server.output
    finally:
        group.close()
