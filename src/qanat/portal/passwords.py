"""Password hashing with scrypt (Python's ``hashlib.scrypt``, no extra dependency).

Stored form, PHC-like and self-describing so that the cost can be raised
later without breaking existing hashes::

    $scrypt$ln=15,r=8,p=1$<salt, base64>$<key, base64>

The default cost (N = 2**15, r = 8, p = 1: 32 MiB and some tens of
milliseconds per check) follows the usual interactive-login recommendation.
:meth:`PasswordHasher.needs_rehash` tells when a stored hash is weaker than
the current setting, so that the portal can upgrade it at the next login.

Verification of an unknown user runs the same KDF on a dummy hash
(:meth:`PasswordHasher.burn`) so that timing does not reveal whether the
user exists.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

#: Longest password looked at; longer ones are refused before hashing.
MAX_PASSWORD_CHARS = 1024
_MAX_LOG2_N = 20  # refuse to spend more than ~1 GiB on a stored hash


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True, slots=True)
class PasswordHasher:
    """scrypt with a given cost.

    Attributes:
        log2_n: CPU/memory cost exponent (N = 2**log2_n).
        r: block size.
        p: parallelism.
        salt_bytes / key_bytes: sizes of the random salt and the derived key.
    """

    log2_n: int = 15
    r: int = 8
    p: int = 1
    salt_bytes: int = 16
    key_bytes: int = 32

    def hash(self, password: str) -> str:
        """Return the storable hash of ``password`` with a fresh salt."""
        salt = secrets.token_bytes(self.salt_bytes)
        key = _derive(password, salt, self.log2_n, self.r, self.p, self.key_bytes)
        return f"$scrypt$ln={self.log2_n},r={self.r},p={self.p}${_b64(salt)}${_b64(key)}"

    def verify(self, password: str, stored: str) -> bool:
        """Whether ``password`` matches ``stored``; False for malformed hashes."""
        if len(password) > MAX_PASSWORD_CHARS:
            return False
        parsed = _parse(stored)
        if parsed is None:
            return False
        log2_n, r, p, salt, key = parsed
        return hmac.compare_digest(_derive(password, salt, log2_n, r, p, len(key)), key)

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other (usually weaker) parameters."""
        parsed = _parse(stored)
        return parsed is None or parsed[:3] != (self.log2_n, self.r, self.p)

    def burn(self, password: str) -> None:
        """Spend the time of one verification (for users that do not exist)."""
        self.verify(password[:MAX_PASSWORD_CHARS], _dummy_hash(self))


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash(secrets.token_urlsafe(16))


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int, size: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r * p + (1 << 20),
        dklen=size,
    )


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "scrypt":
        return None
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        log2_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, key = _unb64(parts[3]), _unb64(parts[4])
    except (ValueError, KeyError):
        return None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16 and salt and key):
        return None
    return log2_n, r, p, salt, key
