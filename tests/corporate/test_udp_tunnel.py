"""UDP remotes (``R:<port>:<host>:<port>/udp``) end to end: DNS through the
tunnel, many app sources on one port, idle expiry, flow and size limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from corpnet import (
    Stage,
    UdpApp,
    app_reaches_endpoint,
    connect_options,
    dns_answer_address,
    dns_query,
    dns_server,
    echo_server,
    free_port_both,
    gateway_url,
    log_lines,
    run_async,
    running_connector,
    running_gateway,
    seconds,
    udp_app,
    wait_until,
)

from qanat.connector.runner import Connector
from qanat.gateway.server import Gateway
from qanat.gateway.udp import UdpPort

RECORDS = {f"host{i}.corp.internal": f"10.0.{i // 250}.{i % 250 + 1}" for i in range(40)}


class Setup:
    def __init__(self, gateway: Gateway, connector: Connector, port: int, dns: Any) -> None:
        self.gateway = gateway
        self.connector = connector
        self.port = port
        self.dns = dns

    def endpoint(self) -> UdpPort:
        (endpoint,) = [e for e in self.gateway.ports.open.values() if e.proto == "udp"]
        assert isinstance(endpoint, UdpPort)
        return endpoint

    def exit_flows(self) -> int:
        session = self.connector.session
        if session is None or session.dialer is None:
            return 0
        return sum(len(e.flows) for e in session.dialer.udp_exits)


@contextlib.asynccontextmanager
async def udp_tunnel(
    tmp_path: Path, *connect_flags: str, tcp_too: bool = False, **gateway_settings: Any
) -> AsyncIterator[Setup]:
    stage = Stage()
    async with (
        running_gateway(tmp_path, stage, **gateway_settings) as gateway,
        dns_server(RECORDS) as (dns_port, dns),
        echo_server() as echo_port,
    ):
        port = free_port_both()
        remotes = [f"R:{port}:127.0.0.1:{dns_port}/udp"]
        if tcp_too:  # the same port number for TCP: a separate endpoint
            remotes.append(f"R:{port}:127.0.0.1:{echo_port}")
        options = connect_options(gateway_url(gateway, stage), remotes, stage.token, *connect_flags)
        async with running_connector(options) as connector:
            await wait_until(
                lambda: any(e.proto == "udp" for e in gateway.ports.open.values()),
                "the UDP endpoint",
            )
            yield Setup(gateway, connector, port, dns)


async def lookup(app: UdpApp, query_id: int, name: str) -> str:
    answer = await app.ask(dns_query(query_id, name))
    got_id, address = dns_answer_address(answer)
    assert got_id == query_id
    return address


def test_dns_query_through_the_tunnel(tmp_path: Path) -> None:
    async def main() -> None:
        async with udp_tunnel(tmp_path, tcp_too=True) as setup:
            app = await udp_app(setup.port)
            try:
                assert await lookup(app, 0x1234, "host7.corp.internal") == "10.0.0.8"
                assert await lookup(app, 0x4321, "host39.corp.internal") == "10.0.0.40"
                # Nothing was lost while the channel opened: no query was resent.
                assert len(setup.dns.sources) == 2
            finally:
                app.close()
            # TCP on the same port number still reaches its own endpoint.
            await app_reaches_endpoint(setup.port)
            snapshot = setup.endpoint().snapshot()
            assert snapshot.endpoint == f"secure-gateway:{setup.port}/udp"
            assert snapshot.udp is not None
            assert snapshot.udp.packets_out == 2

    run_async(main())


def test_many_app_sources_on_one_port_each_get_their_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with udp_tunnel(tmp_path) as setup:
            apps = [await udp_app(setup.port) for _ in range(30)]
            try:
                results = await asyncio.gather(
                    *(lookup(app, 100 + i, f"host{i}.corp.internal") for i, app in enumerate(apps))
                )
                assert results == [RECORDS[f"host{i}.corp.internal"] for i in range(30)]
                # One flow per app at the gateway, one socket per flow at the connector.
                assert len(setup.endpoint().flows) == 30
                assert setup.exit_flows() == 30
                assert len({addr for addr in setup.dns.sources}) == 30
                # A second round reuses the flows.
                await asyncio.gather(
                    *(lookup(app, 200 + i, f"host{i}.corp.internal") for i, app in enumerate(apps))
                )
                assert len({addr for addr in setup.dns.sources}) == 30
            finally:
                for app in apps:
                    app.close()

    run_async(main())


def test_idle_flows_expire_on_both_sides(tmp_path: Path) -> None:
    async def main() -> None:
        async with udp_tunnel(
            tmp_path, "--udp-idle-timeout", "300ms", udp_idle_timeout_s=0.3
        ) as setup:
            app = await udp_app(setup.port)
            try:
                await lookup(app, 1, "host1.corp.internal")
                assert len(setup.endpoint().flows) == 1
                assert setup.exit_flows() == 1
                await wait_until(lambda: not setup.endpoint().flows, "gateway flow expiry")
                await wait_until(lambda: setup.exit_flows() == 0, "connector flow expiry")
                # The same app is simply a new flow afterwards.
                assert await lookup(app, 2, "host2.corp.internal") == "10.0.0.3"
            finally:
                app.close()

    run_async(main())


def test_gateway_flow_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with udp_tunnel(
            tmp_path, udp_max_flows=3, udp_idle_timeout_s=0.5 * seconds(1)
        ) as setup:
            apps = [await udp_app(setup.port) for _ in range(4)]
            try:
                for i, app in enumerate(apps[:3]):
                    await lookup(app, i, f"host{i}.corp.internal")
                apps[3].send(dns_query(3, "host3.corp.internal"))
                await wait_until(
                    lambda: log_lines(caplog, "already 3 UDP flows (the limit)"), "the limit log"
                )
                assert apps[3].answers.empty()
                assert len(setup.endpoint().flows) == 3
                # Once the others went idle, the fourth app gets through.
                await wait_until(lambda: not setup.endpoint().flows, "flow expiry")
                assert await lookup(apps[3], 4, "host3.corp.internal") == "10.0.0.4"
            finally:
                for app in apps:
                    app.close()

    run_async(main())


def test_connector_flow_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with udp_tunnel(tmp_path, "--udp-max-flows", "2") as setup:
            apps = [await udp_app(setup.port) for _ in range(3)]
            try:
                for i, app in enumerate(apps[:2]):
                    await lookup(app, i, f"host{i}.corp.internal")
                apps[2].send(dns_query(2, "host2.corp.internal"))
                await wait_until(
                    lambda: log_lines(caplog, "already 2 UDP flows (the limit, --udp-max-flows)"),
                    "the connector's limit log",
                )
                assert setup.exit_flows() == 2
                assert apps[2].answers.empty()
            finally:
                for app in apps:
                    app.close()

    run_async(main())


def test_datagram_size_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with udp_tunnel(tmp_path) as setup:
            app = await udp_app(setup.port)
            try:
                largest = b"ECHO" + bytes(range(256)) * 35 + b"x" * 48
                assert len(largest) == 9012
                assert await app.ask(largest) == largest
                app.send(largest + b"!")
                await wait_until(
                    lambda: log_lines(caplog, "dropped a datagram of 9013 bytes"),
                    "the oversized-datagram log",
                )
                assert app.answers.empty()
                # The flow carries on.
                assert await app.ask(b"ECHO small") == b"ECHO small"
            finally:
                app.close()
            assert setup.endpoint().dropped == 1

    run_async(main())
