"""The gateway's database stage source follows portal changes within 1 s."""

from __future__ import annotations

import asyncio

import pytest

from qanat.errors import StoreError
from qanat.gateway.stages import StageEvent, StageEventKind, TokenVerdict, check_token
from qanat.portal import Actor, Portal
from qanat.store import DatabaseStageSource, Store, StoreConfig

SRC = "127.0.0.1"
DEADLINE_S = 1.0


async def next_event(events: asyncio.Queue[StageEvent], started: float) -> StageEvent:
    loop = asyncio.get_running_loop()
    event = await asyncio.wait_for(events.get(), timeout=DEADLINE_S)
    assert loop.time() - started < DEADLINE_S
    return event


def test_change_through_another_engine_reaches_the_gateway_within_1s(
    db_url: str, portal: Portal, operator: Actor, acme: str
) -> None:
    """The portal writes through its own engine; the source polls with another."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gateway_store = Store(StoreConfig(db_url))  # as in a separate gateway process
        source = DatabaseStageSource(gateway_store)
        events: asyncio.Queue[StageEvent] = asyncio.Queue()
        source.subscribe(events.put_nowait)
        await source.start()
        try:
            assert source.stages() == []

            started = loop.time()
            first = await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
            event = await next_event(events, started)
            assert first.token is not None
            assert event.kind is StageEventKind.CHANGED
            assert event.stage.key == "acme/Test"
            assert check_token(event.stage, first.token) is TokenVerdict.OK

            started = loop.time()
            await asyncio.to_thread(portal.deactivate, operator, SRC, acme, "Test")
            event = await next_event(events, started)
            assert not event.stage.active
            assert source.lookup(event.stage.address_id) == event.stage

            started = loop.time()
            await asyncio.to_thread(portal.activate, operator, SRC, acme, "Test")
            assert (await next_event(events, started)).stage.active

            started = loop.time()
            renewed = await asyncio.to_thread(portal.renew_token, operator, SRC, acme, "Test")
            stage = (await next_event(events, started)).stage
            assert check_token(stage, first.token) is TokenVerdict.RENEWED
            assert check_token(stage, renewed.token) is TokenVerdict.OK
            assert events.empty()
        finally:
            await source.close()
            gateway_store.close()

    asyncio.run(scenario())


def test_poll_without_changes_reloads_nothing(
    store: Store, portal: Portal, operator: Actor, acme: str
) -> None:
    async def scenario() -> None:
        source = DatabaseStageSource(store, poll_interval_s=3600)
        await source.start()
        try:
            assert not await source.refresh()
            before = store.stage_revision()
            # Changes that gateways do not care about leave the counter alone.
            await asyncio.to_thread(portal.add_stage, operator, SRC, acme, "Staging")
            assert store.stage_revision() == before
            assert not await source.refresh()
            await asyncio.to_thread(portal.activate, operator, SRC, acme, "Staging")
            assert store.stage_revision() == before + 1
            assert await source.refresh()
            assert [s.key for s in source.stages()] == ["acme/Staging"]
        finally:
            await source.close()

    asyncio.run(scenario())


def test_first_load_failure_is_raised_and_close_is_safe() -> None:
    async def scenario() -> None:
        store = Store(StoreConfig("postgresql://qanat:pw@127.0.0.1:9/qanat"))
        source = DatabaseStageSource(store)
        try:
            with pytest.raises(StoreError, match=r"127\.0\.0\.1:9\b"):
                await source.start()
        finally:
            await source.close()
            store.close()

    asyncio.run(scenario())
