"""Connector identity (--id or derived), the 1,000-remote limit, drain options."""

from __future__ import annotations

import pytest

from qanat.cli import build_parser
from qanat.connector.options import options_from_args
from qanat.errors import ConfigError
from qanat.wire.handshake import derive_connector_id, parse_features, valid_connector_id
from qanat.wire.remotes import decode_remotes

ADDRESS = "http://127.0.0.1:8080/sg_00000000-0000-4000-8000-000000000000"


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return options_from_args(build_parser().parse_args(["connect", *argv]))


def test_derived_identity_is_stable_and_depends_on_all_three() -> None:
    remotes = decode_remotes(["R:8081:10.0.0.5:80", "R:8082:smtp:25"])
    base = derive_connector_id("tok", remotes, "host-a")
    assert base == derive_connector_id("tok", list(reversed(remotes)), "host-a")
    assert base.startswith("h-")
    assert valid_connector_id(base)
    assert "tok" not in base
    assert base != derive_connector_id("tok2", remotes, "host-a")
    assert base != derive_connector_id("tok", remotes[:1], "host-a")
    assert base != derive_connector_id("tok", remotes, "host-b")


@pytest.mark.parametrize("text", ["a", "conn-1", "dc1.rack2:conn@x", "A" * 64])
def test_valid_ids(text: str) -> None:
    assert valid_connector_id(text)


@pytest.mark.parametrize("text", ["", "-a", "a b", "a/b", "A" * 65, "é", "a\n"])
def test_invalid_ids(text: str) -> None:
    assert not valid_connector_id(text)


def test_options_default_identity_is_derived() -> None:
    one = parse("--header", "token: abc", ADDRESS, "R:8081:10.0.0.5:80")
    two = parse("--header", "token: abc", ADDRESS, "R:8081:10.0.0.5:80")
    assert one.connector_id == two.connector_id
    assert one.connector_id.startswith("h-")
    assert one.drain_timeout_s == 30.0


def test_options_explicit_identity_and_drain_timeout() -> None:
    opts = parse("--id", "edge-1", "--drain-timeout", "5s", ADDRESS, "R:8081:10.0.0.5:80")
    assert opts.connector_id == "edge-1"
    assert opts.drain_timeout_s == 5.0


def test_options_refuse_a_bad_id() -> None:
    with pytest.raises(ConfigError, match="--id"):
        parse("--id", "no spaces", ADDRESS, "R:8081:10.0.0.5:80")


def test_options_refuse_more_than_1000_remotes_with_a_clear_message() -> None:
    remotes = [f"R:{20000 + i}:127.0.0.1:{20000 + i}" for i in range(10_000)]
    with pytest.raises(
        ConfigError, match="10000 remotes given: a connector may declare at most 1000"
    ):
        parse(ADDRESS, *remotes)


def test_features() -> None:
    assert parse_features("drain, Other ,") == {"drain", "other"}
    assert parse_features("") == frozenset()
