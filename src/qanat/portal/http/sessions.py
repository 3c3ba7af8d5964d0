"""Browser sessions and CSRF tokens, signed with the portal's secret.

A session is a cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure`` when the
portal is served over HTTPS) holding the user's id and name, an expiry and a
random nonce, signed with HMAC-SHA256, and the time it was issued. Any portal
process that shares the secret (``<data dir>/portal-secret``) accepts it.
Roles are not in the cookie: every request reads them again, and with them
the user's ``sessions_valid_after``: signing out (or changing the password)
ends every session of that user issued before.

CSRF: every form and every cookie-authenticated request that changes
something must carry a token derived from the session's nonce (form field
``csrf_token`` or header ``X-CSRF-Token``); a forged cross-site form cannot
know it. The sign-in form has no session yet, so it is tied the same way to
a short-lived pre-session cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from qanat.errors import ConfigError

SESSION_COOKIE = "qanat_session"
LOGIN_COOKIE = "qanat_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SECRET_FILE = "portal-secret"  # noqa: S105 - a file name


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    username: str
    expires_at: float
    nonce: str
    issued_at: float = 0.0


def load_secret(data_dir: Path | None) -> bytes:
    """The signing secret: kept in ``data_dir`` (mode 0600), else per process.

    Raises:
        ConfigError: the secret file cannot be read or written.
    """
    if data_dir is None:
        return secrets.token_bytes(32)
    path = data_dir / SECRET_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read the portal secret {path}: {exc}") from None
    secret = secrets.token_bytes(32)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
    except OSError as exc:
        raise ConfigError(f"cannot write the portal secret {path}: {exc}") from None
    return secret


def _same(given: str, expected: str) -> bool:
    # compare_digest refuses non-ASCII str: compare bytes (any input, constant time).
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Issues and checks session cookies and CSRF tokens.

    Args:
        secret: HMAC key (32+ random bytes).
        session_ttl_s: how long a sign-in lasts.
    """

    def __init__(self, secret: bytes, *, session_ttl_s: float = 12 * 3600) -> None:
        self._secret = secret
        self.session_ttl_s = session_ttl_s

    def _mac(self, purpose: str, payload: str) -> str:
        digest = hmac.new(self._secret, f"{purpose}\0{payload}".encode(), hashlib.sha256)
        return _b64(digest.digest())

    # -- sessions -----------------------------------------------------------

    def issue(self, user_id: int, username: str) -> tuple[str, Session]:
        """A new session and its cookie value."""
        now = time.time()
        expires_at = float(int(now + self.session_ttl_s))
        session = Session(user_id, username, expires_at, secrets.token_hex(16), round(now, 6))
        payload = _b64(
            json.dumps(
                {
                    "u": user_id,
                    "n": username,
                    "e": int(session.expires_at),
                    "r": session.nonce,
                    "i": session.issued_at,
                }
            ).encode()
        )
        return f"{payload}.{self._mac('session', payload)}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None if absent, forged or expired."""
        if not cookie or len(cookie) > 1024 or "." not in cookie:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not _same(mac, self._mac("session", payload)):
            return None
        try:
            doc = json.loads(_unb64(payload))
            session = Session(
                int(doc["u"]),
                str(doc["n"]),
                float(doc["e"]),
                str(doc["r"]),
                float(doc.get("i", 0.0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return session if session.expires_at > time.time() else None

    # -- CSRF ---------------------------------------------------------------

    def csrf_token(self, session: Session) -> str:
        """The token forms and scripts of this session must send back."""
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and _same(str(token), self.csrf_token(session))

    def login_nonce(self) -> str:
        """A fresh pre-session nonce (the sign-in form's cookie)."""
        return secrets.token_hex(16)

    def login_token(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def login_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce) and bool(token) and _same(str(token), self.login_token(str(nonce)))
