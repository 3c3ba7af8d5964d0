"""The store: one engine, and transactions that speak in records.

A caller does all of one operation inside ``with store.transaction() as tx:``;
the block commits when it ends and rolls back when it raises, so an operation
is written whole or not at all. Database failures come out as the
``StoreError`` family (see :mod:`qanat.store.engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from qanat.errors import MigrationError
from qanat.store.activity import ActivityQueries
from qanat.store.catalogue import CatalogueQueries
from qanat.store.engine import (
    WRITE_OPTION,
    StoreConfig,
    create_store_engine,
    redact_url,
    translate_errors,
)
from qanat.store.identity import IdentityQueries
from qanat.store.migrate import current_revision, head_revision, migrate_engine
from qanat.store.models import StageRevision
from qanat.store.tenancy import TenancyQueries

log = logging.getLogger("qanat.store")

#: Told after a commit that changed stages: (new stage revision, stage keys).
StageListener = Callable[[int, Iterable[str]], None]


class Transaction(TenancyQueries, IdentityQueries, ActivityQueries, CatalogueQueries):
    """Everything one operation may read or write, inside one transaction."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._stages_changed = False
        self._changed_stages = set()
        self.revision: int | None = None  # the stage revision this transaction wrote

    def _finish(self) -> None:
        # Gateways poll this counter; bump it in the same transaction as the
        # change so that they never see the new number before the new data.
        if self._stages_changed:
            self.revision = self._session.execute(
                update(StageRevision)
                .where(StageRevision.id == 1)
                .values(value=StageRevision.value + 1)
                .returning(StageRevision.value)
            ).scalar_one()


class Store:
    """Access to one database; safe to share between threads."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._engine = create_store_engine(config)
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        #: Called after every commit that changed stages (in the committing
        #: thread; listeners must not block): the control bus publishes there.
        self.stage_listeners: list[StageListener] = []

    @property
    def display_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return redact_url(self.config.url)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        """One transaction; commits at the end of the block, rolls back on error.

        ``write=False`` for reads: on SQLite they then take no write lock.

        Raises:
            DatabaseBusy, DatabaseUnreachable, StoreError: the database failed;
                nothing of the block was written.
        """
        engine = self._write_engine if write else self._engine
        with (
            translate_errors(self.config.url, self.config.busy_timeout_s),
            Session(engine, expire_on_commit=False, autoflush=False) as session,
            session.begin(),
        ):
            tx = Transaction(session)
            yield tx
            tx._finish()
        if tx.revision is not None:
            for listener in list(self.stage_listeners):
                try:
                    listener(tx.revision, frozenset(tx._changed_stages))
                except Exception:
                    log.exception("stage listener %r failed", listener)

    def stage_revision(self) -> int:
        """The change counter of stages and gateways: one tiny query.

        Raises:
            DatabaseBusy, DatabaseUnreachable, StoreError: the database failed.
        """
        with (
            translate_errors(self.config.url, self.config.busy_timeout_s),
            self._engine.connect() as conn,
        ):
            value = conn.execute(select(StageRevision.value).where(StageRevision.id == 1))
            return int(value.scalar_one())

    def upgrade(self) -> str:
        """Apply pending migrations (see :func:`qanat.store.migrate.upgrade`)."""
        return migrate_engine(self._engine, self.config)

    def check_schema(self) -> None:
        """Make sure the schema is the one this code expects.

        Raises:
            MigrationError: the database is empty, older or newer.
        """
        current, head = current_revision(self._engine, self.config), head_revision()
        if current != head:
            raise MigrationError(
                f"database {self.display_url} is at schema revision {current or 'none'},"
                f" this qanat needs {head}; start qanat with migrations enabled"
                " (qanat.store.upgrade) to bring it up to date"
            )

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()


def open_store(config: StoreConfig, *, migrate: bool = True) -> Store:
    """Open the database, upgrading (or at least checking) its schema.

    Raises:
        DatabaseBusy, DatabaseUnreachable, MigrationError: see :meth:`Store.upgrade`.
    """
    store = Store(config)
    try:
        if migrate:
            store.upgrade()
        else:
            store.check_schema()
    except BaseException:
        store.close()
        raise
    return store
