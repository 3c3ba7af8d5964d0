"""The control bus over a real nats-server: messages wake the nodes, the database decides."""

from __future__ import annotations

import asyncio
import logging

import pytest

from qanat.cluster.control import ControlFollower, ControlPublisher, StageChanged, stage_subject
from qanat.cluster.natsbus import Bus, NatsSettings
from qanat.errors import ConfigError
from qanat.gateway.stages import StageEvent
from qanat.portal import Actor, Portal
from qanat.store import DatabaseStageSource, Store, StoreConfig
from support.natsserver import NatsServer, running_nats
from support.timing import eventually, scaled

SRC = "127.0.0.1"
#: Longer than any test: a change seen sooner came by message, not by poll.
NEVER_S = 3600.0


def settings(server: NatsServer) -> NatsSettings:
    return NatsSettings(url=server.url, reconnect_wait_s=0.1, connect_timeout_s=1.0)


def test_bad_nats_urls_are_refused_with_the_fix() -> None:
    for url in ("", "http://nats:4222", "nats://"):
        with pytest.raises(ConfigError, match="nats://"):
            NatsSettings(url=url).servers  # noqa: B018
    assert NatsSettings(url="nats://u:secret@h:4222").display == "nats://h:4222"


def test_messages_are_only_hints() -> None:
    assert StageChanged.decode(StageChanged("acme/Dev", 7).encode()) == StageChanged("acme/Dev", 7)
    for junk in (b"", b"{}", b"[1]", b'{"stage": "x", "revision": "seven"}', b"\xff"):
        assert StageChanged.decode(junk) is None
    assert stage_subject("acme/Dev") != stage_subject("acme/Test")
    assert stage_subject("a b.c>*").count(".") == 2  # any key makes a valid subject


async def test_a_change_reaches_a_node_by_message_and_not_by_poll(
    nats_server: NatsServer, store: Store, db_url: str, portal: Portal, operator: Actor, acme: str
) -> None:
    loop = asyncio.get_running_loop()
    portal_bus = Bus(settings(nats_server), "portal")
    publisher = ControlPublisher(portal_bus, loop)
    store.stage_listeners.append(publisher.committed)
    node_store = Store(StoreConfig(db_url))
    source = DatabaseStageSource(node_store)
    node_bus = Bus(settings(nats_server), "node")
    follower = ControlFollower(node_bus, source, fallback_poll_s=NEVER_S, safety_poll_s=NEVER_S)
    events: list[StageEvent] = []
    source.subscribe(events.append)
    await source.start()
    await follower.start()
    await portal_bus.start()
    await node_bus.start()
    try:
        await eventually(lambda: portal_bus.up and node_bus.up, "both connected to NATS")
        first = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
        await eventually(lambda: events and events[-1].stage.active, "the activation", 5)
        address = events[-1].stage.address_id
        await asyncio.to_thread(portal.deactivate, operator, SRC, acme, "Test")
        await eventually(lambda: not source.lookup(address).active, "the deactivation", 5)
        assert follower.messages >= 2
        assert publisher.published >= 2
        assert first.token
        # A forged or stale message costs one read and changes nothing.
        known = source.revision
        await portal_bus.publish(stage_subject("acme/Test"), b"junk")
        await portal_bus.publish(stage_subject("acme/Test"), StageChanged("x", 0).encode())
        await portal_bus.publish(stage_subject("x"), StageChanged("x", 10**9).encode())
        await eventually(lambda: follower.messages >= 4, "the two well-formed messages")
        assert source.revision == known
        assert not source.lookup(address).active
    finally:
        await publisher.close()
        await portal_bus.close()
        await node_bus.close()
        await source.close()
        node_store.close()


async def test_nats_outage_falls_back_to_polling_says_so_once_and_loses_nothing(
    nats_server: NatsServer,
    store: Store,
    db_url: str,
    portal: Portal,
    operator: Actor,
    acme: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="qanat.cluster")
    loop = asyncio.get_running_loop()
    portal_bus = Bus(settings(nats_server), "portal")
    publisher = ControlPublisher(portal_bus, loop)
    store.stage_listeners.append(publisher.committed)
    node_store = Store(StoreConfig(db_url))
    source = DatabaseStageSource(node_store)
    node_bus = Bus(settings(nats_server), "node")
    follower = ControlFollower(node_bus, source, fallback_poll_s=0.2, safety_poll_s=NEVER_S)
    await source.start()
    await follower.start()
    await portal_bus.start()
    await node_bus.start()
    try:
        await eventually(lambda: portal_bus.up and node_bus.up, "both connected to NATS")
        await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
        await eventually(lambda: source.stages(), "the activation by message")
        address = source.stages()[0].address_id

        await asyncio.to_thread(nats_server.stop)
        await eventually(lambda: not node_bus.up, "the node noticing NATS is gone", 15)
        # Published into the void: the node finds it by polling.
        await asyncio.to_thread(portal.deactivate, operator, SRC, acme, "Test")
        await eventually(lambda: not source.lookup(address).active, "the poll fallback", 5)

        await asyncio.to_thread(nats_server.start)
        await eventually(lambda: node_bus.up and portal_bus.up, "reconnected to NATS", 15)
        # Changed while the node reconnects: still seen (message or re-read).
        await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
        await eventually(lambda: source.lookup(address).active, "the change after recovery", 5)
        downs = [r for r in caplog.records if "unreachable: following" in r.getMessage()]
        ups = [r for r in caplog.records if "is back:" in r.getMessage()]
        said = [r.getMessage() for r in caplog.records]
        assert len(downs) == 1, said
        assert len(ups) == 1, said
    finally:
        await publisher.close()
        await portal_bus.close()
        await node_bus.close()
        await source.close()
        node_store.close()


async def test_a_node_started_while_nats_is_down_polls_and_joins_later(
    nats_server: NatsServer, store: Store, db_url: str, portal: Portal, operator: Actor, acme: str
) -> None:
    await asyncio.to_thread(nats_server.stop)
    node_store = Store(StoreConfig(db_url))
    source = DatabaseStageSource(node_store)
    node_bus = Bus(settings(nats_server), "node")
    follower = ControlFollower(node_bus, source, fallback_poll_s=0.2, safety_poll_s=NEVER_S)
    await source.start()
    await follower.start()
    await node_bus.start()
    try:
        await eventually(lambda: source.poll_interval_s == 0.2 and not node_bus.up, "fallback")
        await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
        await eventually(lambda: source.stages(), "the activation by poll", 5)
        await asyncio.to_thread(nats_server.start)
        await eventually(lambda: node_bus.up, "connected once NATS is there", scaled(10))
        assert source.poll_interval_s == NEVER_S
    finally:
        await node_bus.close()
        await source.close()
        node_store.close()


async def test_nats_credentials_are_used_and_a_wrong_token_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="qanat.cluster")
    with running_nats("--auth", "s3cret-nats-token") as server:
        good = Bus(NatsSettings(url=server.url, token="s3cret-nats-token"), "good")
        bad = Bus(NatsSettings(url=server.url, token="wrong", reconnect_wait_s=0.05), "bad")
        await good.start()
        await bad.start()
        try:
            await eventually(lambda: good.up, "the right token admitted")
            await eventually(
                lambda: any("not reachable" in r.getMessage() for r in caplog.records),
                "the refusal said",
            )
            await asyncio.sleep(0.3)  # several more attempts; still said once
            assert not bad.up
            said = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
            assert len(said) == 1, said
            assert "wrong" not in said[0]
            assert "s3cret" not in " ".join(r.getMessage() for r in caplog.records)
        finally:
            await good.close()
            await bad.close()
