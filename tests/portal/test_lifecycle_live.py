"""The gateway lifecycle against a running ``qanat up`` with real connectors.

Each test drives the portal through its HTTP API and watches what the
gateway does to real connector tunnels and app connections on loopback.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from portalkit import (
    SLOW,
    LogTap,
    api_client,
    app_request,
    connector,
    echo_endpoint,
    eventually,
    free_port,
    port_refuses,
    running_up,
    tunnel_probe,
)

from qanat.wire.tokens import new_address_id

DEV = "/orgs/acme/stages/Development"


def test_new_stage_is_inactive_and_refuses_connectors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            org = await api.ok("POST", "/orgs", {"name": "acme"})
            assert org["stages"] == ["Development", "Test", "Production"]
            stages = (await api.ok("GET", "/orgs/acme/stages"))["stages"]
            assert {s["status"] for s in stages} == {"inactive"}
            assert {s["address"] for s in stages} == {None}
            # Never activated: no address exists, any attempt is refused (401).
            status, body = await tunnel_probe(up.url, new_address_id(), "whatever")
            assert status == 401, body
            # Activated then deactivated: the right token learns it is inactive (403).
            activation = await api.ok("POST", DEV + "/activate")
            await api.ok("POST", DEV + "/deactivate")
            address_id = activation["address"].rsplit("/", 1)[1]

            async def refused_inactive() -> bool:
                status, body = await tunnel_probe(up.url, address_id, activation["token"])
                return status == 403 and "inactive" in body

            await eventually(refused_inactive, 1.0, "an inactive stage refuses its token")

    asyncio.run(scenario())


def test_activate_first_time_gives_token_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_up(tmp_path) as up, api_client(up) as api:
            await api.ok("POST", "/orgs", {"name": "acme"})
            first = await api.ok("POST", DEV + "/activate")
            assert first["address"].startswith(up.url + "/sg_")
            assert first["token"]
            assert first["first"] is True
            assert first["status"] == "active"
            again = await api.ok("POST", DEV + "/activate")
            assert again["address"] == first["address"]
            assert "token" not in again
            assert again["changed"] is False
            status = await api.ok("GET", DEV)
            assert status["status"] == "active"
            assert status["address"] == first["address"]
            assert first["token"] not in str(status)
            audit = (await api.ok("GET", "/orgs/acme/audit"))["entries"]
            actions = [e["action"] for e in audit]
            assert actions[:3] == ["gateway.activate", "gateway.activate", "org.create"]
            assert audit[0]["actor"] == "user:admin"
            assert first["token"] not in str(audit)

    asyncio.run(scenario())


def test_deactivate_closes_tunnels_within_a_second_and_reactivate_reconnects(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        app_port = free_port()
        async with (
            running_up(tmp_path) as up,
            api_client(up) as api,
            echo_endpoint() as ep_port,
        ):
            await api.ok("POST", "/orgs", {"name": "acme"})
            activation = await api.ok("POST", DEV + "/activate")
            remote = f"R:{app_port}:127.0.0.1:{ep_port}"
            with LogTap("qanat.connector") as tap:
                async with connector(activation["address"], activation["token"], remote) as conn:

                    async def served() -> bool:
                        return not await port_refuses(app_port)

                    await eventually(served, 5, "the connector's port opens")
                    assert await app_request(app_port, "one") == "echo: one"

                    async def listed() -> bool:
                        doc = await api.ok("GET", DEV)
                        return len(doc["connectors"]) == 1 and len(doc["endpoints"]) == 1

                    await eventually(listed, 3, "the status lists the connector")
                    status = await api.ok("GET", DEV)
                    c = status["connectors"][0]
                    assert c["source_address"].startswith("127.0.0.1:")
                    assert c["version"].startswith("qanat-")
                    assert c["connected_since"]
                    assert status["endpoints"][0]["name"] == f"secure-gateway:{app_port}"
                    assert status["endpoints"][0]["connectors"] == [c["id"]]

                    async def rtt_known() -> bool:
                        doc = await api.ok("GET", DEV)
                        conns = doc["connectors"]
                        return bool(conns) and conns[0]["keepalive_rtt_ms"] is not None

                    await eventually(rtt_known, 5, "the keepalive round-trip is reported")

                    # Deactivate: within 1 s no tunnel, no port, retries refused.
                    await api.ok("POST", DEV + "/deactivate")
                    started = time.monotonic()
                    assert up.gateway is not None
                    gateway = up.gateway

                    async def torn_down() -> bool:
                        return not gateway.tunnels and await port_refuses(app_port)

                    await eventually(torn_down, 1.0, "tunnels closed and port stopped")
                    assert time.monotonic() - started <= 1.0 * 1.5
                    attempts = conn.stats.attempts

                    async def retrying_refused() -> bool:
                        return conn.stats.attempts >= attempts + 2 and any(
                            "inactive" in m for m in tap.messages
                        )

                    await eventually(retrying_refused, 5, "the connector keeps retrying, refused")
                    assert not gateway.tunnels

                    async def unlisted() -> bool:
                        return not (await api.ok("GET", DEV))["connectors"]

                    await eventually(unlisted, 2, "the status drops the connector")

                    # Reactivate: the same connector comes back by itself.
                    again = await api.ok("POST", DEV + "/activate")
                    assert again["address"] == activation["address"]
                    assert "token" not in again
                    await eventually(served, 5, "the retrying connector re-establishes")
                    assert await app_request(app_port, "two") == "echo: two"
                    await eventually(listed, 3, "the status lists it again")

            audit = (await api.ok("GET", "/orgs/acme/audit"))["entries"]
            actions = [e["action"] for e in audit]
            assert actions[:3] == ["gateway.activate", "gateway.deactivate", "gateway.activate"]

    asyncio.run(scenario())


def test_renew_keeps_open_tunnels_and_refuses_the_old_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        old_port, new_port = free_port(), free_port()
        async with (
            running_up(tmp_path) as up,
            api_client(up) as api,
            echo_endpoint() as ep_port,
        ):
            await api.ok("POST", "/orgs", {"name": "acme"})
            activation = await api.ok("POST", DEV + "/activate")
            address, old_token = activation["address"], activation["token"]
            address_id = address.rsplit("/", 1)[1]
            with LogTap("qanat.connector") as tap:
                async with connector(address, old_token, f"R:{old_port}:127.0.0.1:{ep_port}"):

                    async def old_served() -> bool:
                        return not await port_refuses(old_port)

                    await eventually(old_served, 5, "the old-token connector is up")
                    renewal = await api.ok("POST", DEV + "/renew")
                    new_token = renewal["token"]
                    assert new_token != old_token
                    assert renewal["address"] == address

                    async def old_refused() -> bool:
                        status, body = await tunnel_probe(up.url, address_id, old_token)
                        return status == 401 and "renewed" in body

                    await eventually(old_refused, 1.0, "new attempts with the old token refused")
                    # The tunnel opened with the old token keeps working.
                    assert await app_request(old_port, "still") == "echo: still"

                    # The new token works for a new connector.
                    async with connector(address, new_token, f"R:{new_port}:127.0.0.1:{ep_port}"):

                        async def new_served() -> bool:
                            return not await port_refuses(new_port)

                        await eventually(new_served, 5, "a connector with the new token is up")
                        assert await app_request(new_port, "new") == "echo: new"

                        # The old tunnel drops: its automatic retry is refused as renewed.
                        assert up.gateway is not None
                        for tunnel in list(up.gateway.tunnels.values()):
                            if any(int(r.local_port) == old_port for r in tunnel.remotes):
                                tunnel.close("test: network dropped")

                        async def retry_refused() -> bool:
                            return any("renewed" in m for m in tap.messages)

                        await eventually(retry_refused, 5, "the old connector's retry refused")
                        assert await port_refuses(old_port)
                        assert await app_request(new_port, "ok") == "echo: ok"
                        status = await api.ok("GET", DEV)
                        assert status["stage"]["renewed_tokens"] == 1
                        assert [e["port"] for e in status["endpoints"]] == [new_port]

            audit = (await api.ok("GET", "/orgs/acme/audit"))["entries"]
            assert audit[0]["action"] == "gateway.renew_token"
            assert old_token not in str(audit)
            assert new_token not in str(audit)

    asyncio.run(scenario())


def test_allowlist_set_in_the_portal_reaches_the_gateway(tmp_path: Path) -> None:
    async def scenario() -> None:
        app_port = free_port()
        async with (
            running_up(tmp_path) as up,
            api_client(up) as api,
            echo_endpoint() as ep_port,
        ):
            await api.ok("POST", "/orgs", {"name": "acme"})
            activation = await api.ok("POST", DEV + "/activate")
            remote = f"R:{app_port}:127.0.0.1:{ep_port}"
            async with connector(activation["address"], activation["token"], remote):

                async def served() -> bool:
                    return not await port_refuses(app_port)

                await eventually(served, 5, "the connector's port opens")
                assert await app_request(app_port, "before") == "echo: before"

                # Only another network: the loopback app is refused from now on.
                doc = await api.ok("PUT", DEV + "/allowlist", {"allow_cidrs": ["10.9.0.0/16"]})
                assert doc["allow_cidrs"] == ["10.9.0.0/16"]

                async def refused() -> bool:
                    try:
                        await app_request(app_port, "blocked", timeout_s=1.0)
                    except (OSError, TimeoutError):
                        return True
                    return False

                took = await eventually(refused, 2, "the gateway applies the new allowlist")
                assert took <= 1.0 * SLOW
                assert up.gateway is not None
                status = up.gateway.status().stages["acme/Development"]
                assert status.endpoints[0].refused_sources >= 1

                # Bad input is refused clearly and changes nothing.
                code, problem = await api.call(
                    "PUT", DEV + "/allowlist", {"allow_cidrs": ["not-a-network"]}
                )
                assert code in (400, 422)
                assert "not-a-network" in problem["detail"]
                code, _ = await api.call("PUT", DEV + "/allowlist", {"allow_cidrs": "10.0.0.0/8"})
                assert code in (400, 422)

                await api.ok("PUT", DEV + "/allowlist", {"allow_cidrs": ["127.0.0.0/8"]})

                async def allowed() -> bool:
                    try:
                        return await app_request(app_port, "again", timeout_s=1.0) == "echo: again"
                    except (OSError, TimeoutError):
                        return False

                await eventually(allowed, 2, "loopback apps allowed again")
            audit = await api.ok("GET", "/orgs/acme/audit")
            actions = [e["action"] for e in audit["entries"]]
            assert actions.count("gateway.configure") >= 2

    asyncio.run(scenario())
