"""Fixtures of the store tests: every test runs on SQLite and on PostgreSQL.

``db_url`` is parametrised: ``sqlite`` is a file in the test's tmp_path,
``postgresql`` a fresh schema on the session's throwaway server (see
pgserver.py). Without a PostgreSQL server binary the PostgreSQL variant is
skipped with the reason, except in CI (CI=true) or as root, where it fails:
``make system-deps`` installs the server there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qanat.portal import Actor, Portal, PortalConfig
from qanat.store import Store, StoreConfig, sqlite_url, upgrade
from support.pgserver import PgServer, find_bindir
from support.store import BASE_URL, TEST_HASHER, FakeClock


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true" or os.geteuid() == 0:
        pytest.fail(f"{reason}; install it with `make system-deps` (CI never skips this)")
    pytest.skip(f"{reason}; not root, so `make system-deps` could not install it")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = find_bindir()
    if bindir is None:
        _unavailable("no PostgreSQL server binary (initdb, pg_ctl) found")
        raise AssertionError("unreachable")
    server = PgServer.start(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of the parametrised back end."""
    if backend == "sqlite":
        return sqlite_url(tmp_path)
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_schema()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store."""
    upgrade(db_url)
    opened = Store(StoreConfig(url=db_url, busy_timeout_s=2.0))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def portal(store: Store, clock: FakeClock) -> Portal:
    return Portal(store, PortalConfig(BASE_URL), hasher=TEST_HASHER, clock=clock)


@pytest.fixture
def operator() -> Actor:
    return Actor.system("test")


@pytest.fixture
def acme(portal: Portal, operator: Actor) -> str:
    """An organisation with its default stages; its name."""
    return portal.create_org(operator, "127.0.0.1", "acme").name
