"""Validation of names, passwords and networks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qanat.errors import InvalidInput
from qanat.portal import names
from qanat.store import Role


@pytest.mark.parametrize(("given_", "expected"), [("acme", "acme"), (" ACME-2 ", "acme-2")])
def test_org_names(given_: str, expected: str) -> None:
    assert names.org_name(given_) == expected


@pytest.mark.parametrize("bad", ["", "-acme", "acme-", "ac me", "a/b", "é", "a" * 64])
def test_bad_org_names(bad: str) -> None:
    with pytest.raises(InvalidInput, match="organisation name"):
        names.org_name(bad)


def test_stage_names_keep_case_and_collapse_spaces() -> None:
    assert names.stage_name("  Pre   Production ") == "Pre Production"
    for bad in ("", "a/b", "x" * 65, "-x", "tab\there?"):
        with pytest.raises(InvalidInput, match="stage name"):
            names.stage_name(bad)


def test_usernames_are_lower_case() -> None:
    assert names.username(" Alice@Example.COM ") == "alice@example.com"
    with pytest.raises(InvalidInput):
        names.username("alice smith")


def test_password_policy() -> None:
    assert names.new_password("ten chars!") == "ten chars!"
    for bad in ("short", "x" * 1025):
        with pytest.raises(InvalidInput, match="10 to 1024"):
            names.new_password(bad)


def test_roles() -> None:
    assert names.role("viewer") is Role.VIEWER
    assert names.role(Role.ADMIN) is Role.ADMIN
    assert names.role("operator") is Role.OPERATOR
    with pytest.raises(InvalidInput, match="admin, operator, viewer"):
        names.role("root")


def test_networks_are_normalised() -> None:
    assert names.cidrs(["10.0.0.7/8", " ::1 ", "10.0.0.0/8"]) == ("10.0.0.0/8", "::1/128")
    assert names.bind_host(" 127.0.0.1 ") == "127.0.0.1"
    assert names.port_range(1, 65535) == (1, 65535)
    with pytest.raises(InvalidInput):
        names.port_range(0, 10)
    with pytest.raises(InvalidInput):
        names.cidrs(["300.0.0.0/8"])


@given(st.text(max_size=80))
def test_validators_return_or_raise_invalid_input(text: str) -> None:
    for check in (names.org_name, names.stage_name, names.username, names.source_address):
        try:
            result = check(text)
        except InvalidInput:
            continue
        assert result == check(result)  # normalising twice changes nothing
