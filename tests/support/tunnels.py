"""An in-process gateway and connectors, for the adapter and leak tests.

One stage (``acme/dev``) with a fresh token, served by a gateway on
127.0.0.1 port 0; connectors are :class:`~qanat.connector.runner.Connector`
objects running as tasks of the test's loop, stopped on exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qanat.connector.options import ConnectOptions
from qanat.connector.runner import Connector
from qanat.errors import ChannelOpenFailed
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import MemoryStageSource, StageConfig
from qanat.gateway.tunnel import TunnelState
from qanat.net.ssh import SshTunnel, connect_tunnel
from qanat.net.websocket import client_handshake
from qanat.wire.remotes import decode_remotes
from qanat.wire.tokens import hash_token, new_address_id, new_token
from support.timing import eventually, scaled


@dataclass
class GatewayEnv:
    """A running in-process gateway with one stage."""

    gateway: Gateway
    source: MemoryStageSource
    stage: StageConfig
    token: str

    @property
    def port(self) -> int:
        return self.gateway.address[1]

    @property
    def address(self) -> str:
        """The stage address as the portal would show it."""
        return f"http://127.0.0.1:{self.port}/{self.stage.address_id}"

    def active_tunnels(self) -> list[Any]:
        return [t for t in self.gateway.tunnels.values() if t.state is TunnelState.ACTIVE]

    def serves(self, port: int, proto: str = "tcp") -> bool:
        endpoint = self.gateway.ports.open.get((self.stage.bind_host, port, proto))
        return endpoint is not None and bool(endpoint.tunnels)


@asynccontextmanager
async def running_gateway(
    data_dir: Path, stage: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[GatewayEnv]:
    """Start a gateway (port 0) with one active stage; close it on exit."""
    token = new_token()
    config = StageConfig(
        key="acme/dev",
        address_id=new_address_id(),
        token_hashes=(hash_token(token),),
        **(stage or {}),
    )
    source = MemoryStageSource()
    source.put(config)
    settings.setdefault("listen_port", 0)
    gateway = Gateway(GatewaySettings(data_dir=data_dir, **settings), source)
    await gateway.start()
    try:
        yield GatewayEnv(gateway, source, config, token)
    finally:
        await gateway.close()


def connect_options(env: GatewayEnv, remotes: Sequence[str], **overrides: Any) -> ConnectOptions:
    """Options of a connector for ``env``'s stage, with test-sized timeouts."""
    values: dict[str, Any] = {
        "address": env.address,
        "remotes": tuple(decode_remotes(remotes)),
        "headers": (("token", env.token),),
        "keepalive_s": 0.0,
        "connect_timeout_s": scaled(10),
        "dial_timeout_s": scaled(5),
        "max_retry_interval_s": 0.5,
    }
    values.update(overrides)
    return ConnectOptions(**values)


@asynccontextmanager
async def running_connector(options: ConnectOptions) -> AsyncIterator[Connector]:
    """Run a connector until the block ends, then stop it (bounded)."""
    connector = Connector(options)
    task = asyncio.get_running_loop().create_task(connector.run(), name="test-connector")
    try:
        yield connector
    finally:
        connector.stop_event.set()
        async with asyncio.timeout(scaled(10)):
            code = await task
        assert code == 0, f"connector exited with {code}"


@asynccontextmanager
async def serving_connector(
    env: GatewayEnv, remotes: Sequence[str], **overrides: Any
) -> AsyncIterator[Connector]:
    """A connector whose remotes are all being served when the block starts."""
    options = connect_options(env, remotes, **overrides)
    async with running_connector(options) as connector:
        ports = [(int(r.local_port), r.remote_proto) for r in options.remotes]
        await eventually(
            lambda: all(env.serves(*p) for p in ports), f"gateway serving ports {ports}", 10
        )
        yield connector


async def raw_tunnel(env: GatewayEnv, dialer: Any = None) -> SshTunnel:
    """Upgrade and SSH as a connector would, but send no ``config``: for tests
    that want to say something else in it (or nothing at all)."""
    loop = asyncio.get_running_loop()
    tcp, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", env.port)
    url = f"ws://127.0.0.1:{env.port}/{env.stage.address_id}?id=123456789&ports="

    async def attach(upper: asyncio.Protocol) -> asyncio.BaseTransport:
        transport, _ = await client_handshake(
            tcp, url, [("token", env.token)], upper, timeout_s=scaled(5)
        )
        return transport

    async def refuse(target: str) -> Any:
        raise ChannelOpenFailed("no dialer", reason="this test tunnel serves nothing")

    try:
        return await connect_tunnel(attach, dialer or refuse, timeout_s=scaled(10))
    except BaseException:
        tcp.abort()
        raise
