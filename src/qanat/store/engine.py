"""Database URLs, engines, and the translation of database errors.

Two back ends, one behaviour:

- **SQLite** (embedded default, ``<data dir>/qanat.db``): WAL journal so that
  readers (the gateway's poller) never wait for the writer, a busy timeout,
  foreign keys on. pysqlite's own transaction handling is switched off and we
  emit ``BEGIN`` ourselves: ``BEGIN IMMEDIATE`` for write transactions, so a
  writer takes the lock up front (a locked database fails before anything is
  written, and two writers never deadlock upgrading a read lock), and
  transactional DDL works for the migrations.
- **PostgreSQL** (``QANAT_DATABASE_URL``, psycopg 3): a connect timeout and a
  ``lock_timeout`` equal to the busy timeout, so both back ends give up on a
  held lock after the same time.

Every SQLAlchemy/driver exception is turned into the ``StoreError`` family by
:func:`translate_errors`; messages name the database with its password
hidden.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from qanat.errors import (
    ConfigError,
    Conflict,
    DatabaseBusy,
    DatabaseUnreachable,
    StoreError,
)

DATABASE_URL_ENV = "QANAT_DATABASE_URL"
SQLITE_FILE_NAME = "qanat.db"
#: Execution option marking an engine whose transactions write.
WRITE_OPTION = "qanat_write"

_PG_BUSY_STATES = {"55P03", "40001", "40P01"}  # lock timeout, serialization, deadlock
_SQLITE_UNREACHABLE = ("unable to open", "disk i/o", "not a database", "readonly", "read-only")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How to reach the database.

    Attributes:
        url: database URL; normalised by :func:`normalize_url` on creation.
        busy_timeout_s: how long a writer waits for a lock held by another
            connection before :class:`~qanat.errors.DatabaseBusy`.
        connect_timeout_s: PostgreSQL connect timeout (libpq rounds up to 2 s).
        pool_size: connections kept open (PostgreSQL).
    """

    url: str
    busy_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    pool_size: int = 5

    def __post_init__(self) -> None:
        """Raises: ConfigError: the URL is malformed or of an unsupported database."""
        object.__setattr__(self, "url", normalize_url(self.url))


def sqlite_url(data_dir: Path) -> str:
    """The embedded database's URL inside ``data_dir``."""
    return URL.create(
        "sqlite", database=str(data_dir.resolve() / SQLITE_FILE_NAME)
    ).render_as_string()


def database_url(data_dir: Path, environ: Mapping[str, str]) -> str:
    """``QANAT_DATABASE_URL`` if set, else SQLite in ``data_dir``; normalised.

    Raises:
        ConfigError: the URL is malformed or names an unsupported database.
    """
    configured = environ.get(DATABASE_URL_ENV, "").strip()
    return normalize_url(configured) if configured else sqlite_url(data_dir)


def normalize_url(url: str) -> str:
    """Accept ``sqlite:///file``, ``postgresql://`` and ``postgres://`` URLs.

    PostgreSQL URLs are pointed at the psycopg 3 driver.

    Raises:
        ConfigError: naming the URL (password hidden) and what is accepted.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"database URL {_redact_unparsed(url)!r} is not a URL;"
            " use postgresql://user:password@host:5432/dbname"
        ) from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                f"database URL {url!r} is an in-memory SQLite database; the portal and"
                " the gateway must share a file: use sqlite:////path/to/qanat.db"
            )
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    raise ConfigError(
        f"database URL {redact_url(url)!r}: {backend!r} is not supported;"
        " use a postgresql:// URL or leave it unset for SQLite in the data directory"
    )


def redact_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return _redact_unparsed(str(url))
    return parsed.render_as_string(hide_password=True)


def _redact_unparsed(text: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", text)


def create_store_engine(config: StoreConfig) -> Engine:
    """An engine with the per-back-end settings described in the module doc.

    Use ``engine.execution_options(qanat_write=True)`` for write transactions.
    """
    url = make_url(config.url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": config.busy_timeout_s})
        _tune_sqlite(engine, config.busy_timeout_s)
        return engine
    # libpq "options" given in the URL (e.g. ?options=-csearch_path%3Dqanat to
    # keep the tables in a schema) are kept; the lock timeout is added to them.
    options = str(url.query.get("options", ""))
    lock_ms = max(1, int(config.busy_timeout_s * 1000))
    return create_engine(
        url.difference_update_query(["options"]),
        pool_size=config.pool_size,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": max(1, round(config.connect_timeout_s)),
            "options": f"{options} -c lock_timeout={lock_ms}".strip(),
        },
    )


def _tune_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            _use_wal(cursor, busy_timeout_s)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _use_wal(cursor: sqlite3.Cursor, busy_timeout_s: float) -> None:
    # WAL is a property of the file: only the first connection ever switches
    # it. The switch needs an exclusive lock and SQLite answers "locked" at
    # once instead of calling the busy handler, so retry until the timeout.
    deadline = time.monotonic() + busy_timeout_s
    while str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
            continue
        if str(mode).lower() != "wal":
            return  # the file refuses WAL (some network file systems): keep its mode


@contextmanager
def translate_errors(url: str, busy_timeout_s: float) -> Iterator[None]:
    """Turn database exceptions raised in the block into ``StoreError``\\ s.

    Raises:
        DatabaseBusy: a lock was held past the busy timeout.
        DatabaseUnreachable: the database cannot be opened or connected to.
        Conflict: a unique constraint tripped (a concurrent duplicate).
        StoreError: any other database failure.
    """
    try:
        yield
    except IntegrityError as exc:
        raise Conflict(
            f"the change conflicts with a concurrent one ({_reason(exc)}); retry"
        ) from exc
    except OperationalError as exc:
        where = redact_url(url)
        if _is_busy(exc):
            raise DatabaseBusy(
                f"database {where} is locked by another connection (waited"
                f" {busy_timeout_s:g} s); nothing was written; retry, or find the"
                " process holding the lock"
            ) from exc
        if _is_unreachable(exc):
            raise DatabaseUnreachable(
                f"cannot use database {where}: {_reason(exc)}; check {DATABASE_URL_ENV}"
                " (or the data directory) and that the database server is running"
            ) from exc
        raise StoreError(f"database {where} failed: {_reason(exc)}") from exc
    except DBAPIError as exc:
        raise StoreError(f"database {redact_url(url)} failed: {_reason(exc)}") from exc


def _is_busy(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) in _PG_BUSY_STATES:
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _is_unreachable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None)
    if state is not None:  # PostgreSQL: connection exception, shutdown, out of resources
        return str(state).startswith(("08", "57P", "53"))
    if type(exc.orig).__module__.startswith("sqlite3"):
        text = str(exc.orig).lower()
        return any(s in text for s in _SQLITE_UNREACHABLE)
    return True  # psycopg reports a failed connection without an SQLSTATE


def _reason(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines()
    return lines[0] if lines else type(exc.orig).__name__
