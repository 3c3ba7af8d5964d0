"""Fixtures of the cluster tests: a real nats-server, a store and a portal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qanat.portal import Actor, Portal, PortalConfig
from qanat.store import Store, StoreConfig, sqlite_url, upgrade
from support.natsserver import NatsServer, running_nats
from support.store import BASE_URL, TEST_HASHER


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    upgrade(db_url)
    opened = Store(StoreConfig(url=db_url, busy_timeout_s=2.0))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def portal(store: Store) -> Portal:
    return Portal(store, PortalConfig(BASE_URL), hasher=TEST_HASHER)


@pytest.fixture
def operator() -> Actor:
    return Actor.system("test")


@pytest.fixture
def acme(portal: Portal, operator: Actor) -> str:
    return portal.create_org(operator, "127.0.0.1", "acme").name
