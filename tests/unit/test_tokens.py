"""Stage tokens, their stored hashes and address ids."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.wire.tokens import (
    HASH_PREFIX,
    MAX_TOKEN_CHARS,
    TOKEN_BYTES,
    hash_token,
    is_address_id,
    new_address_id,
    new_token,
    token_matches,
)


def test_new_token_shape() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) == 43
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        assert len(base64.urlsafe_b64decode(token + "=")) == TOKEN_BYTES


def test_new_token_uses_the_whole_alphabet() -> None:
    # 200 tokens hold 8,600 characters; a 64-symbol alphabet shows up whole
    # unless the generator is badly skewed.
    seen = set("".join(new_token() for _ in range(200)))
    assert len(seen) == 64


def test_hash_format() -> None:
    digest = hash_token("abc")
    assert digest == HASH_PREFIX + hashlib.sha256(b"abc").hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert hash_token("abd") != digest


def test_token_matches() -> None:
    token = new_token()
    stored = hash_token(token)
    assert token_matches(token, stored)
    assert not token_matches(token[:-1], stored)
    assert not token_matches(token + "x", stored)
    assert not token_matches(new_token(), stored)
    assert not token_matches("", stored)
    assert not token_matches(token, stored.removeprefix(HASH_PREFIX))
    assert not token_matches(token, "")


def test_oversized_token_is_rejected() -> None:
    long_token = "a" * (MAX_TOKEN_CHARS + 1)
    assert not token_matches(long_token, hash_token(long_token))
    at_limit = "a" * MAX_TOKEN_CHARS
    assert token_matches(at_limit, hash_token(at_limit))


@pytest.mark.parametrize(
    ("token", "stored"),
    [
        ("\ud800", hash_token("x")),  # lone surrogate: not encodable
        ("abc", "sha256:\u00e9"),  # corrupted stored hash with non-ASCII
        ("é", "sha256:é"),
    ],
)
def test_odd_text_never_raises(token: str, stored: str) -> None:
    assert token_matches(token, stored) is False


def test_surrogate_escaped_header_bytes_hash_as_raw_bytes() -> None:
    # A header decoded with surrogateescape hashes like the raw bytes it came from.
    token = b"t\xffk".decode("utf-8", "surrogateescape")
    assert hash_token(token) == HASH_PREFIX + hashlib.sha256(b"t\xffk").hexdigest()
    assert token_matches(token, hash_token(token))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600), st.text(max_size=80))
def test_token_matches_is_total(token: str, stored: str) -> None:
    assert token_matches(token, stored) is False
    assert token_matches(token, hash_token(token)) is (len(token) <= MAX_TOKEN_CHARS)


def test_address_id_shape() -> None:
    ids = {new_address_id() for _ in range(100)}
    assert len(ids) == 100
    for address_id in ids:
        assert is_address_id(address_id)
        assert address_id.startswith("sg_")
        assert uuid.UUID(address_id.removeprefix("sg_")).version == 4


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sg_",
        "0b7c7e5a-9a53-4b8e-8f57-5a4f1d2c3b4a",
        "SG_0b7c7e5a-9a53-4b8e-8f57-5a4f1d2c3b4a",
        "sg_0B7C7E5A-9A53-4B8E-8F57-5A4F1D2C3B4A",
        "sg_0b7c7e5a9a534b8e8f575a4f1d2c3b4a",
        "sg_0b7c7e5a-9a53-4b8e-8f57-5a4f1d2c3b4a\n",
        "sg_0b7c7e5a-9a53-4b8e-8f57-5a4f1d2c3b4ax",
        "/sg_0b7c7e5a-9a53-4b8e-8f57-5a4f1d2c3b4a",
    ],
)
def test_not_address_ids(text: str) -> None:
    assert not is_address_id(text)


def test_address_id_accepts_any_uuid_version() -> None:
    assert is_address_id("sg_0b7c7e5a-9a53-1b8e-0f57-5a4f1d2c3b4a")
