"""Alembic migrations of the store, run programmatically by ``qanat.store.migrate``.

No ``alembic.ini`` is needed: :func:`qanat.store.migrate.upgrade` builds the
Alembic configuration in code, opens a connection, starts one transaction and
hands the connection to ``env.py`` through ``config.attributes``; every
revision then runs inside that single transaction, so a failed upgrade leaves
the database exactly as it was, on PostgreSQL and on SQLite alike.

To write a new revision, add ``versions/rNNNN_<what>.py`` by hand (copy the
shape of the latest one) and let ``tests/adapter/test_store_migrations.py``
compare the result with ``qanat.store.models``.
"""
