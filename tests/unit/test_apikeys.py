"""API key format, parsing and hashing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qanat.portal import apikeys


def test_generated_key_parses_and_matches() -> None:
    generated = apikeys.generate()
    assert apikeys.prefix_of(generated.key) == generated.prefix
    assert generated.key.startswith(apikeys.display(generated.prefix) + "_")
    assert apikeys.matches(generated.key, generated.key_hash)
    assert not apikeys.matches(generated.key[:-1] + "x", generated.key_hash)
    assert generated.key not in repr(generated)
    assert generated.key_hash not in repr(generated)


def test_keys_are_unique() -> None:
    keys = {apikeys.generate().key for _ in range(50)}
    assert len(keys) == 50


@given(st.text(max_size=200))
def test_prefix_of_never_raises(text: str) -> None:
    prefix = apikeys.prefix_of(text)
    assert prefix is None or (len(prefix) == 12 and prefix in text)
