"""The node link request's ``kind`` (tcp / udp): signed, checked, parse or refuse."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.cluster import linkwire
from qanat.wire.gob import GobDecoder, GobEncoder, UdpPacket

SECRET = b"k" * 32


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_udp_request_says_so_and_the_kind_is_signed() -> None:
    line = linkwire.request_line(SECRET, node="a", stage="acme/Dev", port=8053, now_ms=now_ms(),
                                 nonce="u1", kind="udp")[:-1]  # fmt: skip
    request = linkwire.parse_request(line, SECRET, now_ms(), linkwire.NonceCache())
    assert (request.kind, request.port) == ("udp", 8053)
    # Turning a UDP request into a TCP one (or back) breaks the MAC.
    body = json.loads(line[len(linkwire.MAGIC) :])
    del body["kind"]
    stripped = linkwire.MAGIC + json.dumps(body).encode()
    with pytest.raises(linkwire.LinkRefused, match="secret"):
        linkwire.parse_request(stripped, SECRET, now_ms(), linkwire.NonceCache())
    body["kind"] = "sctp"
    odd = linkwire.MAGIC + json.dumps(body).encode()
    with pytest.raises(linkwire.LinkRefused, match="unknown kind"):
        linkwire.parse_request(odd, SECRET, now_ms(), linkwire.NonceCache())
    # A TCP request is signed as before the kind existed (mixed versions in a rolling upgrade).
    tcp = linkwire.request_line(SECRET, node="a", stage="s", port=1, now_ms=now_ms(), nonce="t1")
    assert b"kind" not in tcp
    assert linkwire.parse_request(tcp[:-1], SECRET, now_ms(), linkwire.NonceCache()).kind == "tcp"


@settings(deadline=None)
@given(
    node=st.text(max_size=40),
    stage=st.text(max_size=80),
    port=st.integers(1, 65535),
    kind=st.sampled_from(linkwire.KINDS),
)
def test_any_signed_request_round_trips(node: str, stage: str, port: int, kind: str) -> None:
    t = now_ms()
    line = linkwire.request_line(SECRET, node=node, stage=stage, port=port, now_ms=t,
                                 nonce="n", kind=kind)  # fmt: skip
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    request = linkwire.parse_request(line[:-1], SECRET, t, linkwire.NonceCache())
    assert (request.node, request.stage, request.port, request.kind) == (node, stage, port, kind)


@settings(deadline=None)
@given(st.binary(max_size=600))
def test_any_line_parses_or_is_refused(junk: bytes) -> None:
    for line in (junk, linkwire.MAGIC + junk):
        try:
            request = linkwire.parse_request(line, SECRET, now_ms(), linkwire.NonceCache())
        except linkwire.LinkRefused:
            continue
        raise AssertionError(f"an unsigned line was accepted: {request}")


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=60), st.binary(max_size=9012)), max_size=6),
    st.integers(1, 500),
)
def test_the_udp_link_stream_carries_datagrams_whole_in_any_chunking(
    packets: list[tuple[str, bytes]], chunk: int
) -> None:
    """What a UDP link connection carries: the gob stream of a UDP channel."""
    encoder = GobEncoder(max_payload_bytes=9012)
    stream = b"".join(encoder.encode(UdpPacket(src, payload)) for src, payload in packets)
    decoder = GobDecoder(max_payload_bytes=9012)
    out: list[UdpPacket] = []
    for i in range(0, len(stream), chunk):
        out.extend(decoder.feed(stream[i : i + chunk]))
    assert [(p.src, p.payload) for p in out] == packets
