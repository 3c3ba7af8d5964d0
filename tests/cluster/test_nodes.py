"""Gateway nodes on one NATS and one database: any node serves any app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nodes import Node, cluster, publishing, running_node

from qanat.connector.options import ConnectOptions
from qanat.errors import ConfigError
from qanat.portal import Actor, Portal
from qanat.store import Store
from qanat.wire.remotes import decode_remotes
from support.endpoints import CommandEndpoint
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
            hops = b.gateway.ports.open[(b.bind, port, "tcp")].pool.members
            assert [m.tunnel.identity for m in hops] == ["node n0"]
            # What /metrics says of it on each side of the node link.
            scraped_b = b.gateway.exposition.render()[0].decode()
            assert "qanat_cluster_nats_connected 1.0" in scraped_b
            assert 'qanat_cluster_remote_ports{node="n0"} 1.0' in scraped_b
            assert 'qanat_cluster_relayed_out_total{node="n0"} 1.0' in scraped_b
            assert 'qanat_cluster_relayed_out_failed_total{node="n0"} 0.0' in scraped_b
            scraped_a = a.gateway.exposition.render()[0].decode()
            assert "qanat_cluster_relayed_in_total 2.0" in scraped_a  # from b and c
            assert "qanat_cluster_remote_ports{" not in scraped_a  # its own connector
            assert "qanat_cluster_link_refused_total 0.0" in scraped_a

            # Deactivation by message closes the port on every node.
            await asyncio.to_thread(portal.deactivate, operator, SRC, acme, "Test")
            await eventually(
                lambda: not any(n.serves(port) for n in (a, b, c)), "the port closed everywhere"
            )
            for node in (a, b, c):
                assert await refused(node.bind, port)


async def test_a_slow_app_on_another_node_holds_the_endpoint_back(
    tmp_path: Path,
    nats_server: NatsServer,
    store: Store,
    db_url: str,
    portal: Portal,
    operator: Actor,
    acme: str,
) -> None:
    """Back-pressure crosses the node link: nothing piles up in memory."""
    port = free_port()
    size = 1 << 30
    with CommandEndpoint() as endpoint:
        async with (
            publishing(store, nats_server.url),
            cluster(tmp_path, db_url, nats_server.url, 2) as (a, b),
        ):
            activation = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
            assert activation.token is not None
            await eventually(lambda: a.source.stages(), "the stage on a")
            address_id = a.source.stages()[0].address_id
            opts = options(a, address_id, activation.token, port, endpoint.port)
            async with running_connector(opts):
                await eventually(lambda: b.serves(port), "b serving through a")
                reader, writer = await asyncio.open_connection(b.bind, port)
                writer.write(f"source {size} 1\n".encode())
                first = await reader.readexactly(65536)  # the stream flows...
                assert first
                # ...then the app stops reading: the endpoint must be held back.
                readings: list[int] = []

                def settled() -> bool:
                    readings.append(endpoint.sent)
                    return len(readings) > 20 and readings[-1] == readings[-20]

                await eventually(settled, "the endpoint held back", 20)
                assert endpoint.sent < 64 << 20, endpoint.sent
                writer.close()


async def test_a_draining_node_says_so_on_readyz_before_it_stops_listening(
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
        cluster(tmp_path, db_url, nats_server.url, 2, drain_grace_s=1.0) as (a, b),
    ):
        activation = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
        assert activation.token is not None
        await eventually(lambda: a.source.stages(), "the stage on a")
        address_id = a.source.stages()[0].address_id
        async with running_connector(options(a, address_id, activation.token, port, target)):
            await eventually(lambda: b.serves(port), "b serving through a")
            assert (await a.gateway.health.readiness())[0]
            drain = asyncio.get_running_loop().create_task(a.member.drain())
            ready, checks = await a.gateway.health.readiness()
            assert not ready
            assert "draining" in checks["cluster"]
            # Still accepting during the grace, then the listener closes.
            assert a.serves(port)
            payload = b"during the grace\n"
            assert await roundtrip(port, payload, host=a.bind) == payload
            # Other nodes put it last: its members there are marked draining.
            await eventually(
                lambda: all(t.draining for t in b.member._remote.values()), "b seeing a drain"
            )
            await asyncio.wait_for(drain, 10)
            assert not a.serves(port)
            assert a.gateway.tunnels == {}


async def test_a_wildcard_node_link_without_an_advertised_address_is_refused(
    tmp_path: Path, nats_server: NatsServer, store: Store, db_url: str
) -> None:
    with pytest.raises(ConfigError, match="--node-link-advertise"):
        async with running_node(tmp_path, db_url, nats_server.url, "w", "127.0.1.9",
                                link_host="0.0.0.0"):  # fmt: skip
            pass
