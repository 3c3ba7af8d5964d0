"""UDP endpoints across gateway nodes: a datagram flow on any node reaches a connector."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nodes import SECRET, Node, cluster, publishing

from qanat.cluster import linkwire
from qanat.cluster.link import LinkDialer, RemoteTunnel
from qanat.connector.options import ConnectOptions
from qanat.errors import ChannelOpenFailed
from qanat.gateway.udp import UdpPort
from qanat.portal import Actor, Portal
from qanat.store import Store
from qanat.wire.remotes import decode_remote, decode_remotes
from support.endpoints import UdpEchoEndpoint
from support.natsserver import NatsServer
from support.servers import echo_server, free_port, free_port_both, roundtrip
from support.timing import eventually, scaled
from support.tunnels import running_connector

SRC = "127.0.0.1"


class _App(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)


async def exchange(app: _App, transport: asyncio.DatagramTransport, data: bytes) -> bytes:
    """Send ``data`` until an answer comes (the first may be dropped while a channel opens)."""
    for _ in range(20):
        transport.sendto(data)
        try:
            return await asyncio.wait_for(app.answers.get(), scaled(0.5))
        except TimeoutError:
            continue
    raise AssertionError(f"no answer to {data!r}")


def udp_endpoint(node: Node, port: int) -> UdpPort | None:
    found = node.gateway.ports.open.get((node.bind, port, "udp"))
    return found if isinstance(found, UdpPort) else None


async def test_datagrams_to_a_node_without_the_connector_are_carried_to_the_node_with_it(
    tmp_path: Path,
    nats_server: NatsServer,
    store: Store,
    db_url: str,
    portal: Portal,
    operator: Actor,
    acme: str,
) -> None:
    port = free_port(kind=2)  # SOCK_DGRAM
    loop = asyncio.get_running_loop()
    with UdpEchoEndpoint() as target:
        async with (
            publishing(store, nats_server.url),
            cluster(tmp_path, db_url, nats_server.url, 2) as (a, b),
        ):
            activation = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
            assert activation.token is not None
            await eventually(lambda: all(n.source.stages() for n in (a, b)), "stage on all nodes")
            options = ConnectOptions(
                address=f"{a.url}/{a.source.stages()[0].address_id}",
                remotes=tuple(decode_remotes([f"R:{port}:127.0.0.1:{target.port}/udp"])),
                headers=(("token", activation.token),),
                keepalive_s=0.0,
                max_retry_interval_s=0.2,
            )
            async with running_connector(options):
                await eventually(lambda: udp_endpoint(a, port) is not None, "node a's UDP port")
                await eventually(
                    lambda: (ep := udp_endpoint(b, port)) is not None and bool(ep.pool.members),
                    "node b's UDP port via presence",
                )
                remote = udp_endpoint(b, port)
                assert remote is not None
                assert [m.tunnel.identity for m in remote.pool.members] == ["node n0"]

                apps = []
                for _ in range(3):
                    transport, app = await loop.create_datagram_endpoint(
                        _App, remote_addr=(b.bind, port)
                    )
                    apps.append((app, transport))
                try:
                    for round_ in range(3):
                        for i, (app, transport) in enumerate(apps):
                            data = f"app {i} round {round_}".encode()
                            assert await exchange(app, transport, data) == b"echo:" + data
                    for app, _ in apps:
                        assert app.answers.empty()
                    # Three flows on b, each relayed as its own flow on a.
                    assert len(remote.flows) == 3
                    serving = udp_endpoint(a, port)
                    assert serving is not None
                    relayed = [s for s, f in serving.flows.items() if f.sink is not None]
                    assert len(relayed) == 3
                    assert len(serving.links) == 1
                    # A node that breaks the gob stream loses its link, nothing else.
                    host, _, link_port = a.member.link_address.rpartition(":")
                    reader, writer = await asyncio.open_connection(host, int(link_port))
                    nonce = linkwire.new_nonce()
                    writer.write(
                        linkwire.request_line(
                            SECRET,
                            node="n9",
                            stage=serving.stage_key,
                            port=port,
                            now_ms=int(time.time() * 1000),
                            nonce=nonce,
                            kind="udp",
                        )
                    )
                    answer = await asyncio.wait_for(reader.readline(), scaled(5))
                    assert linkwire.parse_reply(answer[:-1], SECRET, nonce) is None
                    writer.write(b"\x05hello" * 10)  # type id 52 was never defined
                    assert await asyncio.wait_for(reader.read(), scaled(5)) == b""
                    writer.close()
                    await eventually(lambda: len(serving.links) == 1, "the broken link gone")
                    app, transport = apps[0]
                    assert await exchange(app, transport, b"still") == b"echo:still"
                    # And a's own apps still go straight to the connector.
                    transport, app = await loop.create_datagram_endpoint(
                        _App, remote_addr=(a.bind, port)
                    )
                    try:
                        assert await exchange(app, transport, b"local") == b"echo:local"
                    finally:
                        transport.close()
                finally:
                    for _, transport in apps:
                        transport.close()


async def test_datagrams_for_a_node_without_a_connector_are_dropped_and_counted(
    tmp_path: Path,
    nats_server: NatsServer,
    store: Store,
    db_url: str,
    portal: Portal,
    operator: Actor,
    acme: str,
) -> None:
    port = free_port(kind=2)  # SOCK_DGRAM
    loop = asyncio.get_running_loop()
    async with (
        publishing(store, nats_server.url),
        cluster(tmp_path, db_url, nats_server.url, 2) as (a, b),
    ):
        activation = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
        assert activation.token is not None
        await eventually(lambda: all(n.source.stages() for n in (a, b)), "stage on all nodes")
        stage = b.source.stages()[0]

        # Node a answers a UDP link request for a port it has no connector for: NO.
        link = a.member.link_address.rpartition(":")
        link_address = (link[0], int(link[2]))
        dialer = LinkDialer(SECRET, "n1", link_address, stage.key, port, kind="udp")
        with pytest.raises(ChannelOpenFailed, match="no connector"):
            await dialer.open_channel(b"", lambda: None, timeout_s=scaled(5))

        # Node b holds a stale presence entry for a (as after a's connector left):
        # its datagrams are dropped and counted, and b keeps serving.
        tunnel = RemoteTunnel("n0", link_address, dialer)
        remote = decode_remote(f"R:{port}:127.0.0.1:9/udp")
        assert await b.gateway.ports.join_remote(stage, remote, tunnel) is None
        endpoint = udp_endpoint(b, port)
        assert endpoint is not None
        transport, app = await loop.create_datagram_endpoint(_App, remote_addr=(b.bind, port))
        try:
            for i in range(5):
                transport.sendto(b"lost %d" % i)
                await eventually(lambda i=i: endpoint.dropped >= i + 1, f"datagram {i} dropped")
            assert app.answers.empty()
            assert endpoint.packets_out == 0
            assert endpoint.snapshot().udp is not None
        finally:
            transport.close()
        tunnel.tasks.cancel()
        b.gateway.ports.unbind(tunnel)  # type: ignore[arg-type]


async def test_tcp_and_udp_on_one_port_number_are_both_carried(
    tmp_path: Path,
    nats_server: NatsServer,
    store: Store,
    db_url: str,
    portal: Portal,
    operator: Actor,
    acme: str,
) -> None:
    """Presence keeps a port's TCP and UDP endpoints apart (``<port>`` / ``<port>u``)."""
    port = free_port_both()
    loop = asyncio.get_running_loop()
    with UdpEchoEndpoint() as udp_target:
        async with (
            publishing(store, nats_server.url),
            echo_server() as tcp_target,
            cluster(tmp_path, db_url, nats_server.url, 2) as (a, b),
        ):
            activation = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
            assert activation.token is not None
            await eventually(lambda: all(n.source.stages() for n in (a, b)), "stage on all nodes")
            options = ConnectOptions(
                address=f"{a.url}/{a.source.stages()[0].address_id}",
                remotes=tuple(
                    decode_remotes(
                        [
                            f"R:{port}:127.0.0.1:{tcp_target}",
                            f"R:{port}:127.0.0.1:{udp_target.port}/udp",
                        ]
                    )
                ),
                headers=(("token", activation.token),),
                keepalive_s=0.0,
                max_retry_interval_s=0.2,
            )
            async with running_connector(options):
                await eventually(
                    lambda: b.serves(port) and udp_endpoint(b, port) is not None,
                    "node b serving the port's TCP and UDP endpoints",
                )
                assert await roundtrip(port, b"tcp\n", host=b.bind) == b"tcp\n"
                transport, app = await loop.create_datagram_endpoint(
                    _App, remote_addr=(b.bind, port)
                )
                try:
                    assert await exchange(app, transport, b"udp") == b"echo:udp"
                finally:
                    transport.close()
