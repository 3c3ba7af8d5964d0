"""The upgrade query and the handshake constants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.wire import handshake
from qanat.wire.handshake import new_client_id, parse_tunnel_query, tunnel_query


def test_tunnel_query_as_outsystemscc_sends_it() -> None:
    assert tunnel_query("868575457", ["18083", "18084"]) == "id=868575457&ports=18083,18084"
    assert tunnel_query("868575457", ["18082"]) == "id=868575457&ports=18082"
    assert tunnel_query("868575457", []) == "id=868575457&ports="


def test_parse_tunnel_query() -> None:
    assert parse_tunnel_query("id=868575457&ports=18083,18084") == (
        "868575457",
        ("18083", "18084"),
    )
    assert parse_tunnel_query("ports=18083%2C18084&id=1") == ("1", ("18083", "18084"))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ("", ())),
        ("&&&", ("", ())),
        ("id", ("", ())),
        ("id=&ports=", ("", ())),
        ("ports=,,1,,2,", ("", ("1", "2"))),
        ("id=1&id=2", ("1", ())),
        ("id=%zz%&ports=%ff", ("%zz%", ("\ufffd",))),
        ("id=" + "9" * 100, ("9" * 32, ())),
        ("ports=" + ",".join(["1"] * 5000), ("", ("1",) * 1000)),
        ("x=1;id=2", ("", ())),
    ],
)
def test_parse_tunnel_query_tolerates_garbage(
    query: str, expected: tuple[str, tuple[str, ...]]
) -> None:
    assert parse_tunnel_query(query) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_tunnel_query_is_total(query: str) -> None:
    client_id, ports = parse_tunnel_query(query)
    assert isinstance(client_id, str)
    assert len(client_id) <= 32
    assert len(ports) <= 1000
    assert all(isinstance(p, str) and p and "," not in p for p in ports)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=32),
    st.lists(st.text(min_size=1, max_size=8).filter(lambda p: "," not in p), max_size=20),
)
def test_query_round_trip(client_id: str, ports: list[str]) -> None:
    assert parse_tunnel_query(tunnel_query(client_id, ports)) == (client_id, tuple(ports))


def test_new_client_id() -> None:
    ids = {new_client_id() for _ in range(100)}
    assert len(ids) > 90
    for client_id in ids:
        assert len(client_id) == 9
        assert client_id.isdigit()
        assert not client_id.startswith("0")


def test_constants_match_the_protocol() -> None:
    assert handshake.SUBPROTOCOL == "chisel-v3"
    assert handshake.SERVER_VERSION + b"\r\n" == b"SSH-chisel-v3-server\r\n"
    assert len(handshake.CLIENT_VERSION + b"\r\n") == 22
    assert handshake.CHANNEL_TYPE == b"chisel"
    assert handshake.PONG_PAYLOAD == b"pong"
