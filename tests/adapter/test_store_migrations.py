"""Migrations: from empty, idempotent, transactional, in step with the models."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from qanat.errors import MigrationError, QanatError
from qanat.store import Store, StoreConfig, head_revision, open_store, upgrade, utc_now
from qanat.store.engine import create_store_engine
from qanat.store.migrate import SCRIPT_LOCATION, migrate_engine
from qanat.store.models import Base

TABLES = {
    "orgs",
    "stages",
    "gateways",
    "renewed_tokens",
    "users",
    "memberships",
    "api_keys",
    "connectors",
    "audit_log",
    "stage_revision",
    "endpoint_entries",
    "traffic_buckets",
}


def _tables(url: str) -> set[str]:
    engine = create_store_engine(StoreConfig(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_creates_schema(db_url: str) -> None:
    assert upgrade(db_url) == head_revision()
    assert _tables(db_url) == TABLES | {"alembic_version"}
    store = Store(StoreConfig(db_url))
    try:
        assert store.stage_revision() == 0
        store.check_schema()
    finally:
        store.close()


def test_upgrade_is_idempotent_and_keeps_data(db_url: str) -> None:
    upgrade(db_url)
    store = open_store(StoreConfig(db_url))
    try:
        with store.transaction() as tx:
            tx.add_org("acme", utc_now())
        assert upgrade(db_url) == head_revision()
        with store.transaction(write=False) as tx:
            assert [o.name for o in tx.list_orgs()] == ["acme"]
    finally:
        store.close()


def test_concurrent_upgrades_take_turns(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(db_url, busy_timeout_s=10)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert _tables(db_url) == TABLES | {"alembic_version"}


def test_models_match_migrations(db_url: str) -> None:
    upgrade(db_url)
    engine = create_store_engine(StoreConfig(db_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_failed_revision_leaves_database_untouched(db_url: str, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPT_LOCATION, scripts)
    (scripts / "versions" / "r9000_broken.py").write_text(
        "from alembic import op\n"
        "revision = 'r9000'\n"
        f"down_revision = {head_revision()!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n"
        "def upgrade():\n"
        "    op.execute('CREATE TABLE half_done (id INTEGER)')\n"
        "    op.execute('THIS IS NOT SQL')\n"
        "def downgrade():\n"
        "    pass\n"
    )
    config = StoreConfig(db_url)
    engine = create_store_engine(config)
    try:
        with pytest.raises(MigrationError, match="rolled back"):
            migrate_engine(engine, config, script_location=scripts)
    finally:
        engine.dispose()
    # Every revision and the broken one ran in one transaction: nothing is left.
    assert _tables(db_url) == set()


def test_unmigrated_or_unknown_schema_is_refused(db_url: str) -> None:
    with pytest.raises(MigrationError, match="revision none"):
        open_store(StoreConfig(db_url), migrate=False)
    upgrade(db_url)
    engine = create_store_engine(StoreConfig(db_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'r9999'"))
    finally:
        engine.dispose()
    with pytest.raises(MigrationError, match="r9999") as excinfo:
        upgrade(db_url)
    assert isinstance(excinfo.value, QanatError)


def test_audit_log_is_append_only(db_url: str) -> None:
    upgrade(db_url)
    store = Store(StoreConfig(db_url))
    try:
        with store.transaction() as tx:
            tx.append_audit(
                at=utc_now(),
                actor="system:test",
                action="x",
                org=None,
                target="t",
                source_address="cli",
                details={},
            )
    finally:
        store.close()
    engine = create_store_engine(StoreConfig(db_url))
    try:
        for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(statement))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT actor FROM audit_log")).scalar_one() == (
                "system:test"
            )
    finally:
        engine.dispose()


def test_catalogue_revision_keeps_roles_and_allows_operator(db_url: str) -> None:
    config = StoreConfig(db_url)
    engine = create_store_engine(config)
    try:
        migrate_engine(engine, config, target="r0001")
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO orgs (id, name, created_at) VALUES (1, 'acme', :t)"),
                {"t": utc_now().replace(tzinfo=None)},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO users (id, username, password_hash, created_at)"
                    " VALUES (1, 'alice', 'h', :t)"
                ),
                {"t": utc_now().replace(tzinfo=None)},
            )
            conn.execute(
                sa.text("INSERT INTO memberships (user_id, org_id, role) VALUES (1, 1, 'admin')")
            )
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(sa.text("UPDATE memberships SET role = 'operator'"))
        assert migrate_engine(engine, config) == head_revision()
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT role FROM memberships")).scalar_one() == "admin"
            conn.execute(sa.text("UPDATE memberships SET role = 'operator'"))
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(sa.text("UPDATE memberships SET role = 'owner'"))
    finally:
        engine.dispose()


def test_platform_revision_keeps_memberships_and_makes_the_first_user_platform_admin(
    db_url: str,
) -> None:
    config = StoreConfig(db_url)
    engine = create_store_engine(config)
    try:
        migrate_engine(engine, config, target="r0002c")
        now = {"t": utc_now().replace(tzinfo=None)}
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO orgs (id, name, created_at) VALUES (1, 'a', :t)"), now
            )
            for uid, name in ((1, "first"), (2, "second")):
                conn.execute(
                    sa.text(
                        "INSERT INTO users (id, username, password_hash, created_at)"
                        f" VALUES ({uid}, '{name}', 'h', :t)"
                    ),
                    now,
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO memberships (user_id, org_id, role)"
                        f" VALUES ({uid}, 1, 'admin')"
                    )
                )
        assert migrate_engine(engine, config) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM memberships")).scalar_one() == 2
            rows = conn.execute(
                sa.text("SELECT username, platform_admin FROM users ORDER BY id")
            ).all()
            assert [(r[0], bool(r[1])) for r in rows] == [("first", True), ("second", False)]
    finally:
        engine.dispose()
