"""Alembic environment: runs the revisions on the connection it is handed.

:func:`qanat.store.migrate.upgrade` opens the connection, begins the one
transaction every revision runs in, and passes it as
``config.attributes["connection"]``. Run any other way (the ``alembic``
command with ``sqlalchemy.url`` set), this file opens its own engine with
the store's settings and still uses one transaction.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from qanat.store.engine import WRITE_OPTION, StoreConfig, create_store_engine, normalize_url
from qanat.store.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite's DDL is transactional once pysqlite stops committing behind
        # our back (see qanat.store.engine); claim it so that Alembic keeps
        # the version bump in the same transaction as the DDL.
        transactional_ddl=True,
        transaction_per_migration=False,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("qanat migrations need a connection or sqlalchemy.url")
    engine = create_store_engine(StoreConfig(url=normalize_url(url)))
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("qanat migrations run online only (they need a connection)")
_main()
