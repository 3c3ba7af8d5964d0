"""Unit tests of the signed session cookies and CSRF tokens (pure)."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from qanat.portal.http.sessions import Signer

SIGNER = Signer(b"k" * 32, session_ttl_s=60)


def test_a_session_round_trips_and_binds_its_csrf_token() -> None:
    cookie, session = SIGNER.issue(7, "alice")
    read = SIGNER.read(cookie)
    assert read == session
    token = SIGNER.csrf_token(session)
    assert SIGNER.csrf_ok(session, token)
    other = SIGNER.issue(7, "alice")[1]
    assert not SIGNER.csrf_ok(other, token)
    assert not SIGNER.csrf_ok(session, None)
    assert not SIGNER.csrf_ok(session, "")


def test_forged_and_foreign_cookies_are_ignored() -> None:
    cookie, _ = SIGNER.issue(1, "admin")
    payload, _, mac = cookie.rpartition(".")
    assert SIGNER.read(payload + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B")) is None
    assert Signer(b"x" * 32).read(cookie) is None  # another portal's secret
    forged = SIGNER.issue(2, "mallory")[0].split(".")[0] + "." + mac
    assert SIGNER.read(forged) is None


def test_expired_sessions_are_ignored() -> None:
    signer = Signer(b"k" * 32, session_ttl_s=-1)
    cookie, session = signer.issue(1, "admin")
    assert session.expires_at < time.time()
    assert signer.read(cookie) is None


def test_the_login_token_is_bound_to_its_nonce() -> None:
    nonce = SIGNER.login_nonce()
    token = SIGNER.login_token(nonce)
    assert SIGNER.login_ok(nonce, token)
    assert not SIGNER.login_ok(SIGNER.login_nonce(), token)
    assert not SIGNER.login_ok(None, token)
    assert not SIGNER.login_ok(nonce, None)


@given(st.text(max_size=2000))
def test_reading_any_cookie_never_raises(text: str) -> None:
    assert SIGNER.read(text) is None or text.count(".") >= 1
