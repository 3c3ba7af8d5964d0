"""Tunnels through real proxies on loopback: tinyproxy (HTTP CONNECT with
basic auth) and microsocks (SOCKS5 with user/password). Each failure must
give a clear message and a retry, never a hang."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpfixtures import Certs, ProxyServer, TinyProxy
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
    run_connector_to_end,
    running_connector,
    running_gateway,
    wait_until,
)

from qanat.tls import server_context


def _tunnel_through(tmp_path: Path, certs: Certs, proxy_url: str) -> None:
    stage = Stage()

    async def main() -> None:
        ctx = server_context(certs.server, None)
        async with (
            running_gateway(tmp_path, stage, ssl_context=ctx) as gateway,
            echo_server() as echo_port,
        ):
            port = free_port()
            options = connect_options(
                gateway_url(gateway, stage),
                [f"R:{port}:127.0.0.1:{echo_port}"],
                stage.token,
                "--tls-ca",
                str(certs.ca_file),
                "--proxy",
                proxy_url,
            )
            async with running_connector(options) as connector:
                await app_reaches_endpoint(port)
                assert connector.stats.sessions == 1
                (tunnel,) = active_tunnels(gateway)
                assert tunnel.info.peer.startswith("127.0.0.1:")

    run_async(main())


def test_tunnel_through_http_connect_proxy_with_auth(
    tmp_path: Path, certs: Certs, tinyproxy: TinyProxy
) -> None:
    proxy = tinyproxy.start()
    _tunnel_through(tmp_path, certs, proxy.url)
    # The address GET and the WebSocket upgrade both went through the proxy.
    connects = [line for line in proxy.log_text().splitlines() if "Request" in line]
    assert len([line for line in connects if "CONNECT 127.0.0.1:" in line]) == 2, connects


@pytest.mark.parametrize("scheme", ["socks5", "socks", "socks5h"])
def test_tunnel_through_socks5_proxy_with_auth(
    tmp_path: Path, certs: Certs, microsocks: ProxyServer, scheme: str
) -> None:
    """``socks://user:pass@host:port`` is the form outsystemscc documents; chisel's
    client takes every ``socks*`` scheme as SOCKS5, and so do we."""
    url = microsocks.url.replace("socks5://", f"{scheme}://", 1)
    assert url.startswith(f"{scheme}://alice:")
    _tunnel_through(tmp_path, certs, url)
    # Both connections (the address GET and the tunnel) went through microsocks.
    relayed = [line for line in microsocks.log_text().splitlines() if "connected to" in line]
    assert len(relayed) == 2, microsocks.log_text()


def _fails_twice(tmp_path: Path, proxy_url: str, *flags: str) -> None:
    """A connector with one retry must give up (exit code 1) in bounded time."""
    stage = Stage()

    async def main() -> None:
        async with running_gateway(tmp_path, stage) as gateway:
            options = connect_options(
                gateway_url(gateway, stage),
                [f"R:{free_port()}:127.0.0.1:9"],
                stage.token,
                "--proxy",
                proxy_url,
                "--max-retry-count",
                "1",
                *flags,
            )
            assert await run_connector_to_end(options) == 1
            assert not active_tunnels(gateway)

    run_async(main())


def test_wrong_http_proxy_password(
    tmp_path: Path, tinyproxy: TinyProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = tinyproxy.start()
    _fails_twice(tmp_path, proxy.url_with("alice", "wrong"))
    failures = log_lines(caplog, "Connection failed")
    assert len(failures) == 2, failures
    for line in failures:
        assert "rejected the user name or password" in line
        assert "check the user name and password in --proxy" in line
        assert "wrong" not in line  # never the password
    assert log_lines(caplog, "Retrying in")


def test_missing_http_proxy_credentials(
    tmp_path: Path, tinyproxy: TinyProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = tinyproxy.start()
    _fails_twice(tmp_path, f"http://127.0.0.1:{proxy.port}")
    failures = log_lines(caplog, "Connection failed")
    assert len(failures) == 2, failures
    assert all("requires a user name and password" in line for line in failures)


def test_wrong_socks5_password(
    tmp_path: Path, microsocks: ProxyServer, caplog: pytest.LogCaptureFixture
) -> None:
    _fails_twice(tmp_path, microsocks.url_with("alice", "wrong"))
    failures = log_lines(caplog, "Connection failed")
    assert len(failures) == 2, failures
    for line in failures:
        assert "SOCKS5 proxy" in line
        assert "rejected the user name or password" in line
        assert "wrong" not in line


def test_proxy_refuses_connect_to_the_port(
    tmp_path: Path, tinyproxy: TinyProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = tinyproxy.start(connect_ports=(443,))
    _fails_twice(tmp_path, proxy.url)
    failures = log_lines(caplog, "Connection failed")
    assert len(failures) == 2, failures
    for line in failures:
        assert "refused CONNECT to 127.0.0.1:" in line
        assert "403" in line
        assert "only allow port 443" in line


def test_unreachable_proxy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _fails_twice(tmp_path, f"http://127.0.0.1:{free_port()}")
    failures = log_lines(caplog, "Connection failed")
    assert len(failures) == 2, failures
    assert all("cannot connect to proxy http://127.0.0.1:" in line for line in failures)


def test_proxy_closing_idle_connections_makes_the_connector_reconnect(
    tmp_path: Path, certs: Certs, tinyproxy: TinyProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = tinyproxy.start(idle_timeout_s=1)
    stage = Stage()

    async def main() -> None:
        ctx = server_context(certs.server, None)
        async with (
            running_gateway(tmp_path, stage, ssl_context=ctx, keepalive_s=0) as gateway,
            echo_server() as echo_port,
        ):
            port = free_port()
            options = connect_options(
                gateway_url(gateway, stage),
                [f"R:{port}:127.0.0.1:{echo_port}"],
                stage.token,
                "--tls-ca",
                str(certs.ca_file),
                "--proxy",
                proxy.url,
                "--keepalive",
                "0s",  # nothing keeps the tunnel busy: the proxy will close it
            )
            async with running_connector(options) as connector:
                await app_reaches_endpoint(port)
                await wait_until(
                    lambda: connector.stats.sessions >= 2, "a second session", timeout_s=10
                )
                await app_reaches_endpoint(port)

    run_async(main(), timeout_s=30)
    closed = log_lines(caplog, "Disconnected:")
    assert closed, caplog.text
    assert "proxy http://alice@127.0.0.1:" in closed[0]
    assert "--keepalive" in closed[0]
