"""In-process cluster nodes for the cluster tests: gateways + ClusterNode on one loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from qanat.cluster.control import ControlPublisher
from qanat.cluster.natsbus import Bus, NatsSettings
from qanat.cluster.node import ClusterNode, ClusterSettings
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import StageConfig
from qanat.store import DatabaseStageSource, Store, StoreConfig

SECRET = b"cluster-test-secret-0123456789"


@dataclass
class Node:
    name: str
    bind: str
    gateway: Gateway
    source: DatabaseStageSource
    member: ClusterNode

    @property
    def url(self) -> str:
        host, port = self.gateway.address
        return f"http://{host}:{port}"

    def serves(self, port: int) -> bool:
        endpoint = self.gateway.ports.open.get((self.bind, port, "tcp"))
        return endpoint is not None and getattr(endpoint, "server", None) is not None


@asynccontextmanager
async def running_node(
    tmp: Path, db_url: str, nats_url: str, name: str, bind: str, **cluster: object
) -> AsyncIterator[Node]:
    store = Store(StoreConfig(db_url))

    def mapped(stage: StageConfig) -> StageConfig:
        return replace(stage, bind_host=bind)

    source = DatabaseStageSource(store, transform=mapped)
    data_dir = tmp / name
    data_dir.mkdir()
    gateway = Gateway(GatewaySettings(data_dir=data_dir, listen_port=0, keepalive_s=0), source)
    settings = ClusterSettings(
        nats=NatsSettings(url=nats_url, reconnect_wait_s=0.1),
        node=name,
        secret=SECRET,
        presence_ttl_s=2.0,
        **cluster,  # type: ignore[arg-type]
    )
    member = ClusterNode(source, settings)
    member.attach(gateway)
    await gateway.start()
    try:
        await member.start()
        try:
            yield Node(name, bind, gateway, source, member)
        finally:
            await member.close()
    finally:
        await gateway.close()
        store.close()


@asynccontextmanager
async def publishing(store: Store, nats_url: str) -> AsyncIterator[ControlPublisher]:
    """The portal side: publish every committed stage change."""
    bus = Bus(NatsSettings(url=nats_url, reconnect_wait_s=0.1), "portal")
    publisher = ControlPublisher(bus, asyncio.get_running_loop())
    store.stage_listeners.append(publisher.committed)
    await bus.start()
    try:
        yield publisher
    finally:
        store.stage_listeners.remove(publisher.committed)
        await publisher.close()
        await bus.close()


@asynccontextmanager
async def cluster(
    tmp: Path, db_url: str, nats_url: str, count: int, **cluster_options: object
) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                running_node(tmp, db_url, nats_url, f"n{i}", f"127.0.1.{i + 1}", **cluster_options)
            )
            for i in range(count)
        ]
        yield nodes
