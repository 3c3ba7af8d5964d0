"""Presence over a real nats-server's key-value bucket."""

from __future__ import annotations

import asyncio
import logging

import pytest

from qanat.cluster.natsbus import Bus, NatsSettings
from qanat.cluster.presence import Holding, Presence, holding_key
from support.natsserver import NatsServer
from support.timing import eventually

TTL_S = 1.5


def holding(node: str, port: int = 8081, **kw: object) -> Holding:
    return Holding(
        node=node,
        link="127.0.0.1:7000",
        stage="acme/Dev",
        port=port,
        remote="R:8081:10.0.0.5:8393",
        **kw,  # type: ignore[arg-type]
    )


def test_holdings_round_trip_and_junk_is_ignored() -> None:
    h = holding("a", connectors=2, draining=True)
    assert Holding.decode(h.encode()) == h
    for junk in (b"", b"{}", b'{"node": "a"}', b"\xff", b'{"node":"a","link":"x","stage":"s",'
                 b'"port":1,"remote":"r"}'):  # fmt: skip
        assert Holding.decode(junk) is None
    assert holding_key("pod a/b", "acme/Dev", 8081).startswith("pod_a_b.")


async def start_node(server: NatsServer, name: str, ttl_s: float = TTL_S) -> tuple[Bus, Presence]:
    bus = Bus(NatsSettings(url=server.url, reconnect_wait_s=0.1), name)
    presence = Presence(bus, name, ttl_s=ttl_s, sweep_s=0.1)
    await presence.start()
    await bus.start()
    await eventually(lambda: presence.bound, f"{name} bound to the bucket")
    return bus, presence


async def stop_node(bus: Bus, presence: Presence, *, withdraw: bool = True) -> None:
    await presence.close(withdraw=withdraw)
    await bus.close()


async def test_entries_appear_change_and_go_with_a_clean_stop(nats_server: NatsServer) -> None:
    # A longer TTL here: a withdrawal seen well within it cannot be an expiry,
    # and one heartbeat (every TTL/3) may be late on a busy machine.
    ttl_s = 3.0
    a_bus, a = await start_node(nats_server, "a", ttl_s)
    b_bus, b = await start_node(nats_server, "b", ttl_s)
    try:
        a.set_local([holding("a"), holding("a", 8082)])
        await eventually(lambda: len(b.remote()) == 2, "b seeing a's two ports")
        assert a.remote() == []  # own entries are not "remote"
        a.set_local([holding("a", draining=True)])
        await eventually(
            lambda: [h.draining for h in b.remote()] == [True], "b seeing a drop 8082 and drain"
        )
        # Kept alive by the heartbeat beyond the TTL.
        await asyncio.sleep(ttl_s * 1.5)  # not synchronisation: the entry must survive this long
        assert len(b.remote()) == 1
        await stop_node(a_bus, a)
        await eventually(lambda: b.remote() == [], "a's entries withdrawn", ttl_s / 2)
    finally:
        await stop_node(b_bus, b)


async def test_a_dead_nodes_entries_expire_and_a_restart_withdraws_its_leftovers(
    nats_server: NatsServer,
) -> None:
    a_bus, a = await start_node(nats_server, "a")
    b_bus, b = await start_node(nats_server, "b")
    try:
        a.set_local([holding("a")])
        await eventually(lambda: len(b.remote()) == 1, "b seeing a")
        await stop_node(a_bus, a, withdraw=False)  # as if killed: nothing withdrawn
        await eventually(lambda: b.remote() == [], "a's entry expiring", TTL_S + 2)

        b.set_local([holding("b")])
        await eventually(lambda: b.bound, "b still bound")
        await stop_node(b_bus, b, withdraw=False)
        # b restarts holding nothing: its earlier entry is withdrawn at once.
        c_bus, c = await start_node(nats_server, "c")
        b_bus, b = await start_node(nats_server, "b")
        await eventually(lambda: c.remote() == [], "b's leftover withdrawn", 1.0)
        await stop_node(c_bus, c)
    finally:
        await stop_node(b_bus, b)


async def test_presence_comes_back_after_a_nats_restart(nats_server: NatsServer) -> None:
    a_bus, a = await start_node(nats_server, "a")
    b_bus, b = await start_node(nats_server, "b")
    try:
        a.set_local([holding("a")])
        await eventually(lambda: len(b.remote()) == 1, "b seeing a")
        await asyncio.to_thread(nats_server.restart)
        await eventually(lambda: a_bus.up and b_bus.up, "both reconnected", 15)
        await eventually(lambda: a.bound and b.bound, "both bound again", 10)
        a.set_local([holding("a"), holding("a", 8082)])
        await eventually(lambda: len(b.remote()) == 2, "b seeing a's new port after the restart")
    finally:
        await stop_node(a_bus, a)
        await stop_node(b_bus, b)


async def test_two_nodes_with_one_name_are_told_apart_from_a_restart(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qanat.cluster")
    a_bus, a = await start_node(nats_server, "same")
    a.link = "127.0.0.1:7000"
    b_bus, b = await start_node(nats_server, "same")
    b.link = "127.0.0.1:7001"
    try:
        a.set_local([holding("same")])  # link 127.0.0.1:7000
        await eventually(
            lambda: any(
                "another node uses the name same" in r.getMessage() for r in caplog.records
            ),
            "the twin named",
            TTL_S * 3,
        )
    finally:
        await stop_node(a_bus, a)
        await stop_node(b_bus, b)
