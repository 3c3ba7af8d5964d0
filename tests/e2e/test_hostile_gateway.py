"""A hostile gateway asks a real ``qanat connect`` for targets it never declared.

The gateway is in-process (so the test can open channels of its choosing on
the connector's tunnel, as a compromised or impersonated gateway would); the
connector is a real process. Without ``--allow-any-target`` the connector
refuses with ``administratively prohibited`` and one log line per interval;
its declared remote keeps working.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from qanat.errors import ChannelOpenFailed
from qanat.net.splice import Splice
from support.processes import ProcessGroup, QanatProcess
from support.servers import echo_server, free_port, roundtrip
from support.timing import eventually, scaled
from support.tunnels import GatewayEnv, running_gateway

pytestmark = pytest.mark.slow
ATTEMPTS = 50


@asynccontextmanager
async def secret_service() -> AsyncIterator[tuple[int, list[int]]]:
    """A loopback service on the private side that nobody declared."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        # Counted once closed: a test that ends as soon as it sees the count
        # must not leave the connection to the loop's shutdown.
        await writer.wait_closed()
        accepted.append(1)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), accepted
    finally:
        server.close()


async def connector(procs: ProcessGroup, env: GatewayEnv, remote: str, *extra: str) -> QanatProcess:
    process = procs.start(
        "connector", "connect", "--header", f"token: {env.token}", env.address, remote, *extra
    )
    await asyncio.to_thread(process.wait_for, r"Connected \(latency", 15)
    port = int(remote.split(":")[1])
    await eventually(lambda: env.serves(port), f"gateway serving {port}", 10)
    return process


async def hostile_open(env: GatewayEnv, target: str) -> Splice:
    tunnel = env.active_tunnels()[0]
    splice = Splice(on_done=lambda _: None)
    await tunnel.ssh.open_channel(target.encode(), lambda: splice.chan_end, timeout_s=scaled(5))
    return splice


def test_connector_refuses_targets_it_did_not_declare(tmp_path: Path, procs: ProcessGroup) -> None:
    async def main() -> None:
        async with (
            running_gateway(tmp_path) as env,
            echo_server() as echo_port,
            secret_service() as (secret, accepted),
        ):
            app_port = free_port()
            process = await connector(procs, env, f"R:{app_port}:127.0.0.1:{echo_port}")
            for target in (f"127.0.0.1:{secret}", f"localhost:{secret}", f"127.0.0.1:{secret}/udp"):
                for _ in range(ATTEMPTS):
                    with pytest.raises(ChannelOpenFailed) as refused:
                        await hostile_open(env, target)
                    assert refused.value.code == ChannelOpenFailed.ADMINISTRATIVELY_PROHIBITED
                    assert "not one of this connector's remotes" in refused.value.reason
            assert accepted == []
            # The declared target still works, also as the gateway names it.
            assert await roundtrip(app_port, b"declared") == b"declared"
            # With early open the channel is confirmed before the dial: the
            # echo's answer shows the dial happened; then the channel ends.
            echoed = await hostile_open(env, f"127.0.0.1:{echo_port}")
            assert echoed.chan is not None
            echoed.chan.write(b"named by the gateway")
            echoed.chan.resume_reading()  # a splice without TCP end starts paused
            await eventually(
                lambda: b"".join(echoed.held) == b"named by the gateway", "the echo's answer", 10
            )
            echoed.close()
            lines = process.find(r"refused a channel to undeclared targets")
            assert 1 <= len(lines) <= 2, process.output()

    asyncio.run(asyncio.wait_for(main(), scaled(60)))


def test_allow_any_target_restores_chisels_behaviour(tmp_path: Path, procs: ProcessGroup) -> None:
    async def main() -> None:
        async with (
            running_gateway(tmp_path) as env,
            echo_server() as echo_port,
            secret_service() as (secret, accepted),
        ):
            app_port = free_port()
            await connector(procs, env, f"R:{app_port}:127.0.0.1:{echo_port}", "--allow-any-target")
            (await hostile_open(env, f"127.0.0.1:{secret}")).close()
            await eventually(lambda: accepted == [1], "the undeclared service dialled", 10)

    asyncio.run(asyncio.wait_for(main(), scaled(60)))
