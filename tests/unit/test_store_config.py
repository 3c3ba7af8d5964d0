"""Database URLs and the portal's configuration (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from qanat.errors import (
    ConfigError,
    Conflict,
    DatabaseBusy,
    DatabaseUnreachable,
    Forbidden,
    InvalidInput,
    MigrationError,
    NotFound,
    PortalError,
    QanatError,
    StoreError,
    Unauthorized,
)
from qanat.portal import PortalConfig
from qanat.store import (
    GatewayRecord,
    GatewayState,
    PrivateGatewaySettings,
    StoreConfig,
    database_url,
    normalize_url,
    redact_url,
    stage_config,
)


def test_default_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    assert database_url(tmp_path, {}) == f"sqlite:///{tmp_path.resolve()}/qanat.db"


def test_environment_url_wins_and_is_normalised(tmp_path: Path) -> None:
    env = {"QANAT_DATABASE_URL": "postgres://q:pw@127.0.0.1:5432/qanat"}
    assert database_url(tmp_path, env) == "postgresql+psycopg://q:pw@127.0.0.1:5432/qanat"
    assert normalize_url("postgresql://h/db") == "postgresql+psycopg://h/db"
    assert StoreConfig("postgres://h/db").url == "postgresql+psycopg://h/db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:topsecret@h/db", "not supported"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("not a url", "is not a URL"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as excinfo:
        normalize_url(url)
    assert "topsecret" not in str(excinfo.value)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:p%40ss@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_public_base_url() -> None:
    config = PortalConfig("https://gw.example.com/qanat/")
    assert config.address("sg_x") == "https://gw.example.com/qanat/sg_x"
    for bad in ("gw.example.com", "ftp://gw", "https://u:p@gw", "https://gw/?a=1"):
        with pytest.raises(ConfigError, match="public base URL"):
            PortalConfig(bad)


def test_error_tree() -> None:
    for portal_error in (NotFound, Conflict, Forbidden, Unauthorized, InvalidInput):
        assert issubclass(portal_error, PortalError)
    for store_error in (DatabaseBusy, DatabaseUnreachable, MigrationError):
        assert issubclass(store_error, StoreError)
    assert issubclass(PortalError, QanatError)
    assert issubclass(StoreError, QanatError)


def test_stage_config_from_gateway_record() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    record = GatewayRecord(
        id=1,
        stage_id=1,
        org_name="acme",
        stage_name="Test",
        state=GatewayState.INACTIVE,
        address_id="sg_00000000-0000-4000-8000-000000000000",
        token_hash="sha256:" + "a" * 64,
        renewed_hashes=("sha256:" + "b" * 64,),
        settings=PrivateGatewaySettings(port_min=8000),
        activated_at=now,
        token_issued_at=now,
        updated_at=now,
    )
    config = stage_config(record)
    assert config.key == "acme/Test"
    assert config.address_id == record.address_id
    assert not config.active
    assert config.token_hashes == ("sha256:" + "a" * 64,)
    assert config.renewed_hashes == ("sha256:" + "b" * 64,)
    assert (config.port_min, config.port_max) == (8000, 65535)
