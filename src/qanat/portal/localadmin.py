"""The local admin of a one-machine installation (``qanat up``).

On its first start ``qanat up`` creates the first user (``admin``, with a
random password printed once and stored only as a scrypt hash) and a *local
admin key*: a random secret written, with the portal's URL, to
``<data dir>/local-admin.json`` with mode 0600, so that ``qanat admin`` run
by the same OS user on the same machine needs no flags. The key stands for
the first admin user (so organisations it creates are theirs, and the audit
log says ``user:admin``); the portal keeps only its SHA-256 in memory.

The file is rewritten at every start with the current URL; the key in it is
kept while the file is intact, and replaced if it is missing or damaged.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from qanat.errors import ConfigError
from qanat.wire.tokens import hash_token, token_matches

LOCAL_ADMIN_FILE = "local-admin.json"
LOCAL_KEY_PREFIX = "ql_"
FIRST_ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class LocalAdmin:
    """The local admin key as the portal knows it: a hash and whose it is."""

    username: str
    key_hash: str = field(repr=False)

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this local admin key (constant time)."""
        return key.startswith(LOCAL_KEY_PREFIX) and token_matches(key, self.key_hash)


@dataclass(frozen=True, slots=True)
class LocalAdminFile:
    """The content of ``local-admin.json`` (what ``qanat admin`` reads)."""

    url: str
    username: str
    api_key: str = field(repr=False)
    #: CA bundle to verify the portal with (the development certificate of a
    #: ``qanat up`` serving HTTPS with one), or "" for the system trust store.
    ca_file: str = ""


def new_password() -> str:
    """A first admin's password: 20 characters, about 119 bits."""
    return secrets.token_urlsafe(15)


def read_file(data_dir: Path) -> LocalAdminFile | None:
    """The local admin file of ``data_dir``, or None if absent or unreadable."""
    path = data_dir / LOCAL_ADMIN_FILE
    try:
        doc = json.loads(path.read_text())
        return LocalAdminFile(
            str(doc["url"]), str(doc["username"]), str(doc["api_key"]), str(doc.get("ca_file", ""))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_file(
    data_dir: Path, url: str, username: str = FIRST_ADMIN, ca_file: str = ""
) -> LocalAdmin:
    """Write (or refresh) the local admin file; return what the portal checks.

    Raises:
        ConfigError: the data directory cannot be written.
    """
    current = read_file(data_dir)
    if (
        current is not None
        and current.username == username
        and current.api_key.startswith(LOCAL_KEY_PREFIX)
    ):
        key = current.api_key
    else:
        key = LOCAL_KEY_PREFIX + secrets.token_urlsafe(32)
    doc = {"url": url, "username": username, "api_key": key}
    if ca_file:
        doc["ca_file"] = ca_file
    path = data_dir / LOCAL_ADMIN_FILE
    tmp = path.with_suffix(".tmp")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)  # an existing file keeps its mode through O_CREAT
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the local admin key to {path}: {exc}") from None
    return LocalAdmin(username=username, key_hash=hash_token(key))
