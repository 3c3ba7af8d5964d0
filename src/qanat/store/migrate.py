"""Schema migrations, applied at startup by :func:`upgrade`.

All pending revisions run in one transaction on one connection (see
``migrations/__init__.py``). On PostgreSQL a transaction-scoped advisory lock
makes concurrent starters (portal and gateway processes) take turns; on
SQLite ``BEGIN IMMEDIATE`` does the same. The second one finds the schema at
head and does nothing, which also makes :func:`upgrade` idempotent.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from qanat.errors import Conflict, DatabaseBusy, DatabaseUnreachable, MigrationError, StoreError
from qanat.store.engine import (
    WRITE_OPTION,
    StoreConfig,
    create_store_engine,
    redact_url,
    translate_errors,
)

SCRIPT_LOCATION = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every qanat process.
_PG_LOCK_KEY = 0x71616E6174  # "qanat"
_PG_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_PG_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def upgrade(url: str, *, busy_timeout_s: float = 5.0) -> str:
    """Bring the database at ``url`` to the newest schema; return its revision.

    Raises:
        DatabaseBusy: another connection held a lock past the busy timeout.
        DatabaseUnreachable: the database cannot be opened or connected to.
        MigrationError: a revision failed or the database is newer than this
            qanat; nothing was changed.
    """
    config = StoreConfig(url=url, busy_timeout_s=busy_timeout_s)
    engine = create_store_engine(config)
    try:
        return migrate_engine(engine, config)
    finally:
        engine.dispose()


def migrate_engine(
    engine: Engine,
    config: StoreConfig,
    *,
    script_location: Path = SCRIPT_LOCATION,
    target: str = "head",
) -> str:
    """Run the revisions up to ``target`` on ``engine`` in one transaction.

    ``script_location`` exists for tests that need a failing revision.

    Raises:
        The same as :func:`upgrade`.
    """
    where = redact_url(config.url)
    try:
        with (
            translate_errors(config.url, config.busy_timeout_s),
            engine.execution_options(**{WRITE_OPTION: True}).connect() as conn,
        ):
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(_PG_LOCK, {"key": _PG_LOCK_KEY})
                command.upgrade(_alembic_config(conn, script_location), target)
            return _current(conn) or ""
    except (DatabaseBusy, DatabaseUnreachable):
        raise
    except (StoreError, Conflict) as exc:
        raise MigrationError(
            f"upgrading database {where} failed and was rolled back: {exc}"
        ) from exc
    except CommandError as exc:
        raise MigrationError(
            f"cannot upgrade database {where}: {exc}; if another qanat version"
            " migrated it, run that version or a newer one"
        ) from exc


def current_revision(engine: Engine, config: StoreConfig) -> str | None:
    """The schema revision the database is at, or None when it is empty.

    Raises:
        DatabaseBusy, DatabaseUnreachable, StoreError: the database failed.
    """
    with translate_errors(config.url, config.busy_timeout_s), engine.connect() as conn:
        return _current(conn)


def head_revision() -> str:
    """The newest revision this qanat knows."""
    head = ScriptDirectory(str(SCRIPT_LOCATION)).get_current_head()
    assert head is not None
    return head


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _alembic_config(conn: Connection, script_location: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["connection"] = conn
    return cfg
