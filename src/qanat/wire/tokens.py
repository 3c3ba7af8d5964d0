"""Stage tokens and address ids.

A token is 256 random bits, URL-safe base64 (43 characters). Only its
SHA-256 is stored: the token has full entropy, so a slow password hash would
add nothing but latency to every connector handshake. Comparison is constant
time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid

TOKEN_BYTES = 32
#: Longest token header value we look at; anything longer is rejected unread.
MAX_TOKEN_CHARS = 512
HASH_PREFIX = "sha256:"

_ADDRESS_ID = re.compile(r"sg_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def new_token() -> str:
    """Return a fresh random token (URL-safe, 43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """Return the storable hash of ``token`` (``sha256:<hex>``)."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Whether ``token`` hashes to ``stored_hash``, in constant time.

    Oversized tokens are rejected without hashing them. Never raises: text
    that cannot be encoded simply does not match.
    """
    if len(token) > MAX_TOKEN_CHARS or not stored_hash.startswith(HASH_PREFIX):
        return False
    try:
        candidate = hash_token(token)
    except UnicodeEncodeError:  # a lone surrogate no header decoder produces
        return False
    # compare_digest refuses str with non-ASCII characters, so compare bytes.
    return hmac.compare_digest(candidate.encode(), stored_hash.encode("utf-8", "surrogatepass"))


def new_address_id() -> str:
    """Return a fresh address id, ``sg_<uuid4>``."""
    return f"sg_{uuid.uuid4()}"


def is_address_id(text: str) -> bool:
    """Whether ``text`` has the shape of an address id (``sg_<uuid>``)."""
    return _ADDRESS_ID.match(text) is not None
