"""Nothing accumulates: many app connections and connector cycles on one gateway.

After 1,000 sequential app connections and 200 connector connect/disconnect
cycles (some ended by the connector, some by the gateway), the gateway must be
back where it started: no tunnels, no endpoints, the same number of asyncio
tasks, the same open file descriptors (within a few), and every Tunnel object
collectable.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

from support.resources import open_fds
from support.servers import echo_server, free_port, roundtrip
from support.timing import eventually
from support.tunnels import GatewayEnv, running_gateway, serving_connector

APP_CONNECTIONS = 1000
CONNECTOR_CYCLES = 200


class Baseline:
    def __init__(self, env: GatewayEnv) -> None:
        self.env = env
        self.fds = open_fds()
        self.tasks = len(asyncio.all_tasks())

    async def check(self, phase: str) -> None:
        gateway = self.env.gateway
        await eventually(lambda: not gateway.tunnels, f"{phase}: no tunnels left")
        await eventually(lambda: not gateway.ports.open, f"{phase}: no endpoints left")
        await eventually(
            lambda: len(asyncio.all_tasks()) == self.tasks, f"{phase}: tasks back to baseline"
        )
        await eventually(
            lambda: abs(open_fds() - self.fds) <= 5, f"{phase}: file descriptors back to baseline"
        )
        assert len(gateway.tasks) == 0, f"{phase}: gateway still owns {len(gateway.tasks)} tasks"


async def check_counters(env: GatewayEnv, port: int, connector: Any) -> None:
    """Every app connection was carried and is closed, on both sides. (A
    function of its own so that no strong reference to a Tunnel survives.)"""
    endpoint = env.gateway.ports.open[("127.0.0.1", port, "tcp")]
    await eventually(lambda: endpoint.open_connections == 0, "app connections closed")
    assert endpoint.connections_failed == 0
    (tunnel,) = env.gateway.tunnels.values()
    assert not tunnel.splices
    assert tunnel.channels_total == APP_CONNECTIONS
    await eventually(lambda: connector.stats.channels_open == 0, "connector channels closed")
    assert connector.stats.channels_total == APP_CONNECTIONS


async def test_many_connections_and_connector_cycles_leak_nothing(tmp_path):
    # 200 deliberate reconnects from one connector would trip the flapping
    # guard (tested on its own in test_pool_limits); lift it here.
    async with running_gateway(tmp_path, flap_connects=10_000) as env, echo_server() as eport:
        tunnels: weakref.WeakSet[Any] = weakref.WeakSet()
        remotes = [f"R:{free_port()}:127.0.0.1:{eport}"]
        port = int(remotes[0].split(":")[1])
        # Warm up once so lazy imports and first-use caches are in the baseline.
        async with serving_connector(env, remotes):
            assert await roundtrip(port, b"warm") == b"warm"
        await eventually(lambda: not env.gateway.tunnels, "warm-up tunnel gone")
        baseline = Baseline(env)

        # Phase 1: app connections through one tunnel, one after the other.
        async with serving_connector(env, remotes) as connector:
            tunnels.update(env.gateway.tunnels.values())
            for i in range(APP_CONNECTIONS):
                payload = b"%d" % i * (1 + i % 50)
                assert await roundtrip(port, payload) == payload
            await check_counters(env, port, connector)
        await baseline.check("after app connections")

        # Phase 2: connectors come and go; every fourth tunnel is ended by the
        # gateway (as a stage deactivation would), the rest by the connector.
        for cycle in range(CONNECTOR_CYCLES):
            async with serving_connector(env, remotes) as connector:
                tunnels.update(env.gateway.tunnels.values())
                if cycle % 10 == 0:
                    assert await roundtrip(port, b"cycle") == b"cycle"
                if cycle % 4 == 0:
                    assert env.gateway.close_stage(env.stage.key, "test ends it") == 1
                    await eventually(lambda: not env.gateway.tunnels, "gateway-side close")
        await baseline.check("after connector cycles")

    gc.collect()
    assert len(tunnels) == 0, f"{len(tunnels)} Tunnel objects still referenced"
