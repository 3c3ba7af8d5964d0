"""scrypt password hashes."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.portal.passwords import MAX_PASSWORD_CHARS, PasswordHasher

CHEAP = PasswordHasher(log2_n=4)


def test_default_cost_round_trip() -> None:
    hasher = PasswordHasher()
    stored = hasher.hash("correct horse battery staple")
    assert stored.startswith("$scrypt$ln=15,r=8,p=1$")
    assert hasher.verify("correct horse battery staple", stored)
    assert not hasher.verify("correct horse battery stapler", stored)
    assert not hasher.needs_rehash(stored)


def test_salted() -> None:
    assert CHEAP.hash("same") != CHEAP.hash("same")


def test_parameters_come_from_the_stored_hash() -> None:
    stored = CHEAP.hash("pässwörd ✓")
    stronger = dataclasses.replace(CHEAP, log2_n=5)
    assert stronger.verify("pässwörd ✓", stored)
    assert stronger.needs_rehash(stored)


def test_overlong_password_is_refused_unhashed() -> None:
    stored = CHEAP.hash("a" * MAX_PASSWORD_CHARS)
    assert CHEAP.verify("a" * MAX_PASSWORD_CHARS, stored)
    assert not CHEAP.verify("a" * (MAX_PASSWORD_CHARS + 1), stored)


def test_burn_does_not_raise() -> None:
    CHEAP.burn("anything")
    CHEAP.burn("x" * 100_000)


@settings(max_examples=200)
@given(st.text(max_size=120))
def test_arbitrary_stored_hash_never_raises_nor_verifies(stored: str) -> None:
    assert CHEAP.verify("password", stored) is False
    assert isinstance(CHEAP.needs_rehash(stored), bool)


def test_malformed_examples() -> None:
    for stored in [
        "",
        "$scrypt$",
        "$scrypt$ln=4,r=8,p=1$$",
        "$scrypt$ln=99,r=8,p=1$AAAA$AAAA",
        "$scrypt$ln=4,r=8$AAAA$AAAA",
        "$bcrypt$ln=4,r=8,p=1$AAAA$AAAA",
        "$scrypt$ln=4,r=8,p=1$not base64!$AAAA",
    ]:
        assert not CHEAP.verify("password", stored)
        assert CHEAP.needs_rehash(stored)
