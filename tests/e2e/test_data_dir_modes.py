"""The data directory and every secret-bearing file in it are private.

A real ``qanat up`` under its default (HTTPS with a development certificate);
then the same directory made readable by others, and started again: fixed,
with a warning naming each path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from support.processes import ProcessGroup

pytestmark = pytest.mark.slow

SECRETS = ("qanat.db", "host_key", "portal-secret", "local-admin.json", "tls/dev-key.pem")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _up_once(procs: ProcessGroup, data: Path) -> str:
    up = procs.start("up", "up", "--data-dir", str(data), "--listen", "127.0.0.1:0")
    up.wait_for(r"Ctrl-C", timeout_s=30)
    output = up.output
    up.kill_group()
    return output


def test_data_directory_and_secrets_are_private(tmp_path: Path, procs: ProcessGroup) -> None:
    data = tmp_path / "data"
    _up_once(procs, data)
    assert _mode(data) == 0o700
    assert _mode(data / "tls") == 0o700
    for name in SECRETS:
        assert _mode(data / name) == 0o600, name
    for extra in ("qanat.db-wal", "qanat.db-shm"):
        if (data / extra).exists():
            assert _mode(data / extra) & 0o077 == 0, extra
    # The certificate itself is public: connectors on this machine read it.
    assert _mode(data / "tls" / "dev-cert.pem") == 0o644

    os.chmod(data, 0o755)
    for name in SECRETS:
        os.chmod(data / name, 0o644)
    output = _up_once(procs, data)
    assert _mode(data) == 0o700
    for name in SECRETS:
        assert _mode(data / name) == 0o600, name
    assert f"data directory {data} was mode 0755 (readable by other users)" in output
    assert f"file {data / 'qanat.db'} was mode 0644" in output
