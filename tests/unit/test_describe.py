"""``describe@qanat`` payloads: pieces, reassembly, and the decoder's one error."""

from __future__ import annotations

import argparse
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.connector.options import add_connect_arguments, options_from_args
from qanat.errors import ConfigError, RemoteProtocolError
from qanat.wire.describe import MAX_PAYLOAD_BYTES, Assembler, Declaration, encode


@given(
    st.integers(1, 65535),
    st.text(max_size=500),
    st.one_of(st.none(), st.text(min_size=1, max_size=3000)),
    st.integers(1, 700),
)
@settings(max_examples=150, deadline=None)
def test_pieces_reassemble_to_the_declaration(
    port: int, text: str, doc: str | None, piece: int
) -> None:
    declaration = Declaration(port, text, doc)
    payloads = list(encode(declaration, piece_chars=piece))
    assembler = Assembler(max_document_chars=10_000)
    results = [assembler.feed(p) for p in payloads]
    assert results[:-1] == [None] * (len(payloads) - 1)
    assert results[-1] == declaration


def test_each_payload_fits_one_ssh_packet() -> None:
    big = Declaration(8081, "d" * 500, '"\\' * 100_000)  # JSON escaping doubles this
    assert all(len(p) <= MAX_PAYLOAD_BYTES for p in encode(big))
    assert max(len(p) for p in encode(big)) < 32_768 + 1024 * 32


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"port": 0}', "no valid port"),
        (b'{"port": true}', "no valid port"),
        (b'{"port": 80, "openapi": 5}', "string or null"),
        (b'{"port": 80, "more": "yes"}', "true or false"),
        (b'{"port": 80}', "'description' must be a string"),
        (b'{"port": 80, "description": "' + b"x" * 501 + b'"}', "at most 500"),
        (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "is over"),
    ],
)
def test_malformed_payloads_are_refused(payload: bytes, words: str) -> None:
    with pytest.raises(RemoteProtocolError, match=None) as info:
        Assembler(max_document_chars=100).feed(payload)
    assert words in str(info.value)


def test_document_and_port_limits() -> None:
    assembler = Assembler(max_document_chars=10, max_ports=1)
    first, second, third = encode(Declaration(80, "a", "x" * 11), piece_chars=4)
    assembler.feed(first)
    assembler.feed(second)
    with pytest.raises(RemoteProtocolError, match="over 10 characters"):
        assembler.feed(third)
    assembler = Assembler(max_document_chars=10, max_ports=1)
    assembler.feed(next(encode(Declaration(80, "a"))))
    with pytest.raises(RemoteProtocolError, match="at most 1 ports"):
        assembler.feed(next(encode(Declaration(81, "b"))))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise_the_documented_error(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):  # and nothing else
        Assembler(max_document_chars=200).feed(raw)


def _options(*extra: str):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_connect_arguments(parser)
    args = parser.parse_args(
        ["--header", "token: t", "http://gw/sg_x", "R:8081:10.0.0.5:80", "R:8082:db:5432", *extra]
    )
    return options_from_args(args, environ={})


def test_describe_and_openapi_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "orders.yaml"
    spec.write_text("openapi: 3.0.0\n")
    options = _options("--describe", "8081=Orders API", "--openapi", f"8081={spec}")
    assert options.declarations == (Declaration(8081, "Orders API", "openapi: 3.0.0\n"),)
    for extra, words in (
        (("--describe", "9999=x"), "not one of the remotes' ports"),
        (("--describe", "8081"), "expected PORT=VALUE"),
        (("--describe", "8081=x", "--openapi", "8081=/nonexistent.yaml"), "cannot read it"),
        (("--openapi", f"8082={spec}"), "give the port a description too"),
    ):
        with pytest.raises(ConfigError, match=None) as info:
            _options(*extra)
        assert words in str(info.value)
