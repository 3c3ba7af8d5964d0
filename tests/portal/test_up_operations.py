"""Operating ``qanat up`` (issue 12, bug 6): readiness includes the database,
``qanat hosts`` reads the stages from the database, connectors are named by
the ``--id`` their operator chose."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest
from portalkit import (
    SLOW,
    TestConnector,
    api_client,
    echo_endpoint,
    eventually,
    free_port,
    running_up,
)

from qanat.cli import build_parser
from qanat.connector.options import ConnectOptions
from qanat.wire.remotes import decode_remote

DEV = "/orgs/acme/stages/Development"


def _cli(argv: list[str]) -> int:
    # Straight to the subcommand: main() would reconfigure the root logger.
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def test_readyz_hosts_and_connector_names_under_qanat_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api, echo_endpoint() as eport:
            await api.ok("POST", "/orgs", {"name": "acme"})
            activation = await api.ok("POST", DEV + "/activate")

            async with aiohttp.ClientSession() as session, session.get(up.url + "/readyz") as r:
                body = await r.text()
                assert r.status == 200, body
            assert "database: ok" in body

            code = await asyncio.to_thread(
                _cli, ["hosts", "--data-dir", str(tmp_path), "--stage", "Development"]
            )
            assert code == 0
            assert capsys.readouterr().out.strip() == "127.0.0.1 secure-gateway"

            port = free_port()
            options = ConnectOptions(
                address=activation["address"],
                remotes=(decode_remote(f"R:{port}:127.0.0.1:{eport}"),),
                headers=(("token", activation["token"]),),
                connector_id="warehouse-1",
                keepalive_s=0.5,
                max_retry_interval_s=0.3,
                connect_timeout_s=5.0,
            )
            conn = TestConnector(options)
            task = asyncio.create_task(conn.run(), name="test-connector")
            try:

                async def shown() -> bool:
                    status = await api.ok("GET", DEV)
                    return [c["id"].split("@")[0] for c in status["connectors"]] == ["warehouse-1"]

                await eventually(shown, 5, "the portal shows the connector by its --id")
                assert up.gateway is not None
                (stage,) = up.gateway.status().stages.values()
                (tunnel,) = stage.connectors
                assert tunnel.connector == "warehouse-1"
                assert tunnel.session == conn.client_id
            finally:
                conn.stop_event.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5 * SLOW)

    asyncio.run(scenario())
