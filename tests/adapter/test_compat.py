"""Wire compatibility with stock chisel-v3 peers (shared/protocol/PROTOCOL.md).

Both directions are checked with peers built in the test, not with qanat's
own WebSocket code:

- a *stock-style client*: the exact upgrade bytes outsystemscc 2.0.11 sends
  (section 2), RFC 6455 framing written here (masked client frames), the
  ``config`` JSON exactly as observed (section 4), then app traffic;
- a *stock-style server* for ``qanat connect``: answers 101 the way a stock
  chisel server does (no subprotocol echo) and records the upgrade request
  and the ``config`` payload the connector sends.

Only SSH comes from qanat.net.ssh; its version lines are checked byte for
byte in test_ssh_adapter.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from qanat import __version__
from qanat.connector.dialer import Dialer
from qanat.net.ssh import HostKey, SshTunnel, serve_tunnel
from qanat.wire.configmsg import encode_config
from support.servers import echo_server, free_port, http_exchange, parse_response, roundtrip
from support.stockpeer import (
    OBSERVED_KEY,
    HandFramed,
    HeadReader,
    go_style_ssh,
    open_upgraded,
    outsystemscc_request,
    stock_101,
)
from support.timing import eventually, scaled
from support.tunnels import GatewayEnv, connect_options, running_connector, running_gateway
from support.wsframes import accept_key, header, parse_http_head

#: PROTOCOL.md section 4, byte for byte, with the ports left to fill in.
OBSERVED_CONFIG = (
    '{"Version":"0.0.0-src","Remotes":[{"LocalHost":"0.0.0.0","LocalPort":"%d",'
    '"LocalProto":"tcp","RemoteHost":"127.0.0.1","RemotePort":"%d",'
    '"RemoteProto":"tcp","Socks":false,"Reverse":true,"Stdio":false}]}'
)


async def stock_client_tunnel(
    env: GatewayEnv, request: bytes, **auth: Any
) -> tuple[SshTunnel, bytes]:
    """Upgrade with ``request`` by hand, then run SSH over hand-made frames,
    authenticating as Go's client does (or as ``auth`` says)."""
    head_reader, head = await open_upgraded(env.port, request)
    assert head.startswith(b"HTTP/1.1 101 "), head

    async def attach(upper: asyncio.Protocol) -> asyncio.BaseTransport:
        return HandFramed.attach(head_reader, upper, mask=True)

    dialer = Dialer(scaled(5), lambda splice: None, lambda splice: None)
    tunnel = await go_style_ssh(attach, dialer, **auth)
    return tunnel, head


@pytest.mark.parametrize(
    ("user", "password", "methods"),
    [
        ("", "", ("none", "password")),  # chisel / outsystemscc without --auth
        ("", "", ("password",)),  # a client that skips none
        ("", "", ("none",)),
        ("", "secret", ("password",)),
        ("chisel", "pass", ("none", "password")),  # chisel --auth chisel:pass
        ("chisel", "", ("password",)),
        ("ü-ser", "", ("none",)),
    ],
)
async def test_every_user_name_and_method_mix_is_accepted(tmp_path, user, password, methods):
    """PROTOCOL.md section 3: the token is the credential; SSH user auth must
    let any name and method through (an empty name used to be refused)."""
    async with running_gateway(tmp_path) as env:
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
        )
        tunnel, _ = await stock_client_tunnel(
            env, request, user=user, password=password, methods=methods
        )
        try:
            assert await tunnel.request("ping") == (True, b"pong")
        finally:
            tunnel.close()
            await tunnel.wait_closed()


async def test_outsystemscc_upgrade_is_accepted_and_carries_traffic(tmp_path):
    async with running_gateway(tmp_path) as env, echo_server() as eport:
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
        )
        tunnel, head = await stock_client_tunnel(env, request)
        try:
            start, headers = parse_http_head(head)
            assert start == "HTTP/1.1 101 Switching Protocols"
            assert [v.lower() for v in header(headers, "Upgrade")] == ["websocket"]
            assert [v.lower() for v in header(headers, "Connection")] == ["upgrade"]
            assert header(headers, "Sec-WebSocket-Accept") == [accept_key(OBSERVED_KEY)]
            # RFC 6455 section 1.3 example, to check accept_key() itself.
            assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

            port = free_port()
            config = (OBSERVED_CONFIG % (port, eport)).encode()
            assert json.loads(config)["Remotes"][0]["LocalHost"] == "0.0.0.0"
            assert await tunnel.request("config", config) == (True, b"")

            (gw_tunnel,) = env.active_tunnels()
            assert gw_tunnel.version == "0.0.0-src"
            assert gw_tunnel.info.client_id == "868575457"
            assert gw_tunnel.info.ports == ("18082",)
            assert gw_tunnel.info.user_agent == "CloudConnector/2.0.11"
            # The stage's bind address decides, not the remote's 0.0.0.0.
            assert env.serves(port)

            assert await roundtrip(port, b"GET / HTTP/1.0\r\n\r\n") == b"GET / HTTP/1.0\r\n\r\n"
            assert await tunnel.request("ping") == (True, b"pong")
            assert await gw_tunnel.ssh.request("ping") == (True, b"pong")
        finally:
            tunnel.close()
            await tunnel.wait_closed()
        await eventually(lambda: not env.gateway.tunnels, "tunnel closed at the gateway")
        assert not env.gateway.ports.open


async def test_header_names_are_case_insensitive(tmp_path):
    async with running_gateway(tmp_path) as env:
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
        )
        request = request.replace(b"Token:", b"TOKEN:").replace(b"Upgrade: web", b"upgrade: web")
        tunnel, _ = await stock_client_tunnel(env, request)
        tunnel.close()
        await tunnel.wait_closed()


async def test_stock_chisel_client_without_token_is_told_how_to_send_one(tmp_path):
    async with running_gateway(tmp_path) as env:
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}",
            f"/{env.stage.address_id}",
            token=None,
            user_agent="Go-http-client/1.1",
        )
        status, _, body = parse_response(await http_exchange(env.port, request))
    assert status == 401
    assert body == b'token missing: send it as --header "token: <token>"\n'


async def test_address_resolution_get_is_answered(tmp_path):
    """Section 1: outsystemscc first GETs the address, following a 302 if any."""

    def resolution(env: GatewayEnv) -> bytes:
        return (
            f"GET /{env.stage.address_id} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{env.port}\r\n"
            "User-Agent: go-resty/2.16.5 (https://github.com/go-resty/resty)\r\n"
            "Accept-Encoding: gzip\r\n\r\n"
        ).encode()

    async with running_gateway(tmp_path) as env:
        status, _, body = parse_response(await http_exchange(env.port, resolution(env)))
        assert status == 200
        assert json.loads(body)["status"] == "active"
    async with running_gateway(tmp_path, redirect_url="https://node2.example.com/") as env:
        status, headers, _ = parse_response(await http_exchange(env.port, resolution(env)))
        assert status == 302
        assert header(headers, "Location") == [f"https://node2.example.com/{env.stage.address_id}"]


# -- qanat connect against a stock-style server -------------------------------------


class StockServer:
    """Answers the upgrade like a stock chisel server and runs qanat's SSH server."""

    def __init__(self, host_key: HostKey) -> None:
        self.host_key = host_key
        self.heads: list[bytes] = []
        self.gets: list[bytes] = []
        self.configs: list[bytes] = []
        self.tunnels: list[SshTunnel] = []
        self.lost = 0

    def protocol(self) -> HeadReader:
        return HeadReader(on_head=self._on_head)

    def _on_head(self, reader: HeadReader, head: bytes) -> None:
        if not header(parse_http_head(head)[1], "Sec-WebSocket-Key"):
            # The address GET a connector sends first; chisel answers 404.
            self.gets.append(head)
            reader.transport.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nNot found\n"
            )
            reader.transport.close()
            return
        self.heads.append(head)
        reader.transport.write(stock_101(head))
        tunnel = serve_tunnel(
            lambda upper: HandFramed.attach(reader, upper, mask=False), self.host_key, self
        )
        self.tunnels.append(tunnel)

    # ServerHooks
    async def on_config(self, payload: bytes) -> str | None:
        self.configs.append(payload)
        return None

    def on_lost(self, exc: BaseException | None) -> None:
        self.lost += 1


class ChannelSink:
    """Session of a channel the test opens itself: collects what comes back."""

    def __init__(self) -> None:
        self.chan: Any = None
        self.data = bytearray()
        self.eof = False

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def session_started(self) -> None:
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


async def test_connector_speaks_to_a_stock_server(tmp_path):
    stock = StockServer(HostKey.load_or_create(tmp_path / "stock_key"))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(stock.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_gateway(tmp_path / "unused") as env, echo_server() as eport:
            address = f"http://127.0.0.1:{port}/{env.stage.address_id}"
            options = connect_options(
                env, [f"R:18082:127.0.0.1:{eport}", "R:18083:smtp.internal:587"], address=address
            )
            async with running_connector(options) as connector:
                await eventually(lambda: stock.configs, "config at the stock server")
                await eventually(lambda: connector.stats.sessions == 1, "connector connected")
                # The stock server's pings and channels are served.
                (tunnel,) = stock.tunnels
                assert await tunnel.request("ping") == (True, b"pong")
                sink = ChannelSink()
                await tunnel.open_channel(f"127.0.0.1:{eport}".encode(), lambda: sink)
                sink.chan.write(b"through a stock server")
                sink.chan.write_eof()
                await eventually(lambda: sink.eof, "echo and EOF back")
                assert bytes(sink.data) == b"through a stock server"
                sink.chan.close()
    finally:
        server.close()
        await server.wait_closed()

    # First the address GET (no query, no token), like outsystemscc; the 404
    # leaves the address as it is.
    (get,) = stock.gets
    start, headers = parse_http_head(get)
    assert start == f"GET /{env.stage.address_id} HTTP/1.1"
    assert header(headers, "Host") == [f"127.0.0.1:{port}"]
    assert not header(headers, "Token")

    (head,) = stock.heads
    start, headers = parse_http_head(head)
    match = re.fullmatch(
        rf"GET /{env.stage.address_id}\?id=(\d{{9}})&ports=18082,18083 HTTP/1\.1", start
    )
    assert match, start
    assert match.group(1) == connector.client_id
    assert header(headers, "Host") == [f"127.0.0.1:{port}"]
    assert header(headers, "Sec-WebSocket-Protocol") == ["chisel-v3"]
    assert header(headers, "Sec-WebSocket-Version") == ["13"]
    assert header(headers, "Token") == [env.token]
    assert header(headers, "User-Agent") == [f"qanat/{__version__}"]
    assert [v.lower() for v in header(headers, "Upgrade")] == ["websocket"]
    assert [v.lower() for v in header(headers, "Connection")] == ["upgrade"]

    (config,) = stock.configs
    assert config == encode_config(f"qanat-{__version__}", options.remotes)
    assert json.loads(config)["Remotes"][1] == {
        "LocalHost": "0.0.0.0",
        "LocalPort": "18083",
        "LocalProto": "tcp",
        "RemoteHost": "smtp.internal",
        "RemotePort": "587",
        "RemoteProto": "tcp",
        "Socks": False,
        "Reverse": True,
        "Stdio": False,
    }


class DescribingStockServer(StockServer):
    """A stock server that would notice a ``describe@qanat`` request."""

    def __init__(self, host_key: HostKey) -> None:
        super().__init__(host_key)
        self.described: list[bytes] = []

    async def on_describe(self, payload: bytes) -> str | None:
        self.described.append(payload)
        return None


async def test_connector_never_sends_describe_to_a_stock_server(tmp_path):
    # --describe / --openapi go only to a gateway that advertised "describe"
    # in its 101 answer; a stock chisel server would never answer the
    # request, and the unanswered reply would swallow the next ping's.
    from qanat.wire.describe import Declaration

    stock = DescribingStockServer(HostKey.load_or_create(tmp_path / "stock_key"))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(stock.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_gateway(tmp_path / "unused") as env, echo_server() as eport:
            address = f"http://127.0.0.1:{port}/{env.stage.address_id}"
            options = connect_options(
                env,
                [f"R:18082:127.0.0.1:{eport}"],
                address=address,
                keepalive_s=0.2,
                declarations=(Declaration(18082, "Orders API", "openapi: 3.0.0\n"),),
            )
            async with running_connector(options) as connector:
                await eventually(lambda: stock.configs, "config at the stock server")
                await eventually(lambda: connector.stats.sessions == 1, "connector connected")
                (tunnel,) = stock.tunnels
                # Requests after config are still answered in order.
                assert await tunnel.request("ping") == (True, b"pong")
                assert await tunnel.request("ping") == (True, b"pong")
    finally:
        server.close()
        await server.wait_closed()
    assert stock.described == []
