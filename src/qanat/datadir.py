"""The data directory: private to the user running qanat.

It holds the database, the SSH host key, the portal's signing secret, the
local admin key and the development certificate's key, so it is created
mode 0700 and every file a server process creates is private (umask 077).
An existing directory (or secret-bearing file) readable by others is fixed,
with a warning naming it, rather than refused: the fix is what anyone would
do by hand.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from qanat.errors import ConfigError

_log = logging.getLogger("qanat.datadir")

#: Files (relative to the data directory) that hold secrets or the database.
SECRET_FILES = (
    "qanat.db",
    "qanat.db-wal",
    "qanat.db-shm",
    "qanat.db-journal",
    "host_key",
    "portal-secret",
    "local-admin.json",
    "tls/dev-key.pem",
)


def private_umask() -> None:
    """Make every file this process creates from now on private (0600 / 0700)."""
    os.umask(0o077)


def secure_data_dir(path: Path) -> None:
    """Create ``path`` (0700), or fix its mode and its secret files' modes.

    Raises:
        ConfigError: it cannot be created or its mode cannot be changed.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        _fix(path, 0o700, "data directory")
        tls = path / "tls"
        if tls.is_dir():
            _fix(tls, 0o700, "directory")
        for name in SECRET_FILES:
            file = path / name
            if file.is_file() and not file.is_symlink():
                _fix(file, 0o600, "file")
    except OSError as exc:
        raise ConfigError(
            f"cannot create or secure the data directory {path}: {exc.strerror or exc};"
            " check its owner and permissions"
        ) from None


def _fix(path: Path, wanted: int, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, wanted)
        _log.warning(
            "%s %s was mode %04o (readable by other users) and holds secrets; set it to %04o",
            what,
            path,
            mode,
            wanted,
        )
