"""Address resolution like outsystemscc: a GET to the address, and a 302
Location becomes the tunnel URL (over TLS, as in production)."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpfixtures import Certs
from corpnet import (
    Stage,
    active_tunnels,
    app_reaches_endpoint,
    connect_options,
    echo_server,
    free_port,
    gateway_url,
    log_lines,
    run_async,
    running_connector,
    running_gateway,
)

from qanat.connector.resolve import redirect_target, request_bytes
from qanat.tls import server_context


def test_redirect_302_is_followed(
    tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    stage = Stage()
    node_b_port: list[int] = []

    async def main() -> None:
        ctx = server_context(certs.server, None)
        async with (
            running_gateway(tmp_path / "b", stage, ssl_context=ctx) as node_b,
            running_gateway(
                tmp_path / "a",
                stage,
                ssl_context=ctx,
                redirect_url=f"https://localhost:{node_b.address[1]}/",
            ) as node_a,
            echo_server() as echo_port,
        ):
            node_b_port.append(node_b.address[1])
            port = free_port()
            options = connect_options(
                gateway_url(node_a, stage),
                [f"R:{port}:127.0.0.1:{echo_port}"],
                stage.token,
                "--tls-ca",
                str(certs.ca_file),
            )
            async with running_connector(options):
                await app_reaches_endpoint(port)
                assert len(active_tunnels(node_b)) == 1
                assert not node_a.tunnels

    run_async(main())
    (line,) = log_lines(caplog, "redirects to")
    assert f"redirects to https://localhost:{node_b_port[0]}/{stage.address_id}" in line


def test_the_address_get_is_outsystemscc_s() -> None:
    assert request_bytes("https://gw.example.com:8443/sg_1?x=1").startswith(
        b"GET /sg_1 HTTP/1.1\r\nHost: gw.example.com:8443\r\n"
    )
    assert request_bytes("http://gw.example.com").startswith(b"GET / HTTP/1.1\r\n")
    assert b"token" not in request_bytes("https://gw.example.com/sg_1").lower()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"HTTP/1.1 302 Found\r\nLocation: https://node2.example.com/sg_1",
            "https://node2.example.com/sg_1",
        ),
        (b"HTTP/1.1 302 Found\r\nlocation:  /sg_2 ", "https://gw.example.com/sg_2"),
        (b"HTTP/1.1 302 Found\r\nLocation: wss://n3.example.com/p?q=1", "wss://n3.example.com/p"),
        (b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://elsewhere/", None),
        (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://elsewhere/", None),
        (b"HTTP/1.1 404 Not Found\r\n", None),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json", None),
        (b"HTTP/1.1 302 Found\r\nLocation: ftp://elsewhere/", None),
        (b"HTTP/1.1 302 Found\r\n", None),
        (b"garbage", None),
        (b"", None),
    ],
)
def test_redirect_target(head: bytes, expected: str | None) -> None:
    assert redirect_target("https://gw.example.com/sg_1", head) == expected
