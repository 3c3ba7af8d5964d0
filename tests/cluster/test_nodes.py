"""Gateway nodes on one NATS and one database: any node serves any app."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodes import Node, cluster, publishing

from qanat.connector.options import ConnectOptions
from qanat.portal import Actor, Portal
from qanat.store import Store
from qanat.wire.remotes import decode_remotes
from support.natsserver import NatsServer
from support.servers import echo_server, free_port, roundtrip
from support.timing import eventually
from support.tunnels import running_connector

SRC = "127.0.0.1"


def options(node: Node, address_id: str, token: str, port: int, target: int) -> ConnectOptions:
    return ConnectOptions(
        address=f"{node.url}/{address_id}",
        remotes=tuple(decode_remotes([f"R:{port}:127.0.0.1:{target}"])),
        headers=(("token", token),),
        keepalive_s=0.0,
        max_retry_interval_s=0.2,
    )


async def refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_an_app_on_a_node_without_the_connector_is_carried_to_the_node_with_it(
    tmp_path: Path,
    nats_server: NatsServer,
    store: Store,
    db_url: str,
    portal: Portal,
    operator: Actor,
    acme: str,
) -> None:
    port = free_port()
    async with (
        publishing(store, nats_server.url),
        echo_server() as target,
        cluster(tmp_path, db_url, nats_server.url, 3) as (a, b, c),
    ):
        activation = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
        assert activation.token is not None
        await eventually(lambda: all(n.source.stages() for n in (a, b, c)), "stage on all nodes")
        address_id = a.source.stages()[0].address_id
        async with running_connector(options(a, address_id, activation.token, port, target)):
            await eventually(lambda: a.serves(port), "node a serving the port")
            await eventually(lambda: b.serves(port) and c.serves(port), "b and c via presence")
            for node in (b, c, a):
                payload = f"through {node.name}\n".encode() * 1000
                assert await roundtrip(port, payload, host=node.bind) == payload
            hops = b.gateway.ports.endpoints[(b.bind, port)].pool.members
            assert [m.tunnel.identity for m in hops] == ["node n0"]

            # Deactivation by message closes the port on every node.
            await asyncio.to_thread(portal.deactivate, operator, SRC, acme, "Test")
            await eventually(
                lambda: not any(n.serves(port) for n in (a, b, c)), "the port closed everywhere"
            )
            for node in (a, b, c):
                assert await refused(node.bind, port)
