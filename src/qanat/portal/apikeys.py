"""API keys: format, parsing and hashing (pure).

A key looks like ``qk_<prefix>_<secret>``: the prefix (12 hex digits) is
stored in clear and shown in lists so that people can tell keys apart and
revoke one; the secret is 256 random bits, URL-safe. The whole key has full
entropy, so, like stage tokens, it is stored as a SHA-256 hash (a slow KDF
would only slow every automated call down) and compared in constant time.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from qanat.wire.tokens import hash_token, token_matches

KEY_PREFIX = "qk_"
_SECRET_BYTES = 32
_KEY = re.compile(r"qk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z")


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A new key: ``key`` is shown once, ``key_hash`` is stored."""

    prefix: str
    key: str = field(repr=False)
    key_hash: str = field(repr=False)


def generate() -> GeneratedKey:
    """A fresh random API key."""
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return GeneratedKey(prefix=prefix, key=key, key_hash=hash_token(key))


def prefix_of(key: str) -> str | None:
    """The prefix of a well-formed key, or None if it does not look like one."""
    match = _KEY.match(key.strip()) if len(key) < 128 else None
    return match.group(1) if match else None


def matches(key: str, key_hash: str) -> bool:
    """Whether ``key`` hashes to ``key_hash``, in constant time."""
    return token_matches(key.strip(), key_hash)


def display(prefix: str) -> str:
    """How a key is named in lists, messages and the audit log."""
    return f"{KEY_PREFIX}{prefix}"
