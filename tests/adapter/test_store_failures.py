"""A database that is locked or unreachable: clear errors, nothing half-written."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from qanat.errors import DatabaseBusy, DatabaseUnreachable
from qanat.portal import Actor, Portal, PortalConfig
from qanat.store import Store, StoreConfig, open_store, sqlite_url, upgrade
from support.pgserver import free_port
from support.store import TEST_HASHER, FakeClock

BUSY_S = 0.3


@contextmanager
def locked(backend: str, url: str) -> Iterator[None]:
    """Another connection holding a lock that blocks create_org.

    SQLite: an exclusive lock on the whole file. PostgreSQL: a lock on the
    audit log only, so that create_org gets as far as writing the
    organisation, its stages and gateways before it blocks; all of that must
    be rolled back.
    """
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as pg:
            pg.execute("LOCK TABLE audit_log IN EXCLUSIVE MODE")
            yield
            pg.rollback()


def test_locked_database_fails_after_busy_timeout_and_writes_nothing(
    backend: str, db_url: str, clock: FakeClock
) -> None:
    upgrade(db_url)
    store = Store(StoreConfig(url=db_url, busy_timeout_s=BUSY_S))
    portal = Portal(store, PortalConfig("https://gw.example.test"), hasher=TEST_HASHER, clock=clock)
    operator = Actor.system("test")
    try:
        with locked(backend, store.config.url):
            started = time.monotonic()
            with pytest.raises(DatabaseBusy, match="locked by another connection") as excinfo:
                portal.create_org(operator, "127.0.0.1", "acme")
            waited = time.monotonic() - started
        assert "nothing was written" in str(excinfo.value)
        assert BUSY_S * 0.9 <= waited < BUSY_S + 5
        with store.transaction(write=False) as tx:
            assert tx.list_orgs() == []
            assert tx.audit_entries("acme", limit=10) == []
        # Released: the same operation now goes through whole.
        assert portal.create_org(operator, "127.0.0.1", "acme").stages
    finally:
        store.close()


def test_unreachable_postgresql_names_the_url_without_password() -> None:
    port = free_port()  # nothing listens there any more
    url = f"postgresql://qanat:hunter2-secret@127.0.0.1:{port}/qanat"
    for attempt in (lambda: upgrade(url), lambda: open_store(StoreConfig(url=url))):
        with pytest.raises(DatabaseUnreachable) as excinfo:
            attempt()
        message = str(excinfo.value)
        assert f"postgresql+psycopg://qanat:***@127.0.0.1:{port}/qanat" in message
        assert "hunter2" not in message
        assert "QANAT_DATABASE_URL" in message


def test_unreachable_store_at_runtime(clock: FakeClock) -> None:
    port = free_port()
    store = Store(StoreConfig(url=f"postgresql://qanat:pw@127.0.0.1:{port}/qanat"))
    try:
        with pytest.raises(DatabaseUnreachable, match=re.escape(f"127.0.0.1:{port}")):
            store.stage_revision()
    finally:
        store.close()


def test_sqlite_in_missing_directory_is_unreachable(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "no" / "such" / "dir")
    with pytest.raises(DatabaseUnreachable, match="unable to open database file"):
        upgrade(url)
