"""The UDP gob codec against Go's own bytes, hand-built streams and hypothesis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qanat.errors import GobError, LocalProtocolError, RemoteProtocolError
from qanat.wire.gob import MAX_PAYLOAD_BYTES, GobDecoder, GobEncoder, UdpPacket

VECTORS = Path(__file__).parent.parent / "vectors"
STREAM = (VECTORS / "chisel-udp-gob-stream.bin").read_bytes()

# What chisel-udp-gob-vectors.txt encodes; the file states src and length.
PACKETS = [
    UdpPacket("127.0.0.1:40001", b"hello"),
    UdpPacket("127.0.0.1:40001", b""),
    UdpPacket("[::1]:53", b"\xab" * 300),
    UdpPacket("", b"x"),
]


def read_vectors() -> list[tuple[str, int, bytes]]:
    lines = (VECTORS / "chisel-udp-gob-vectors.txt").read_text().splitlines()
    pattern = re.compile(r'packet src="(.*)" len=(\d+) bytes=([0-9a-f]+)\Z')
    found = [pattern.match(line) for line in lines if line]
    return [(m[1], int(m[2]), bytes.fromhex(m[3])) for m in found if m]


VECTOR_BYTES = [raw for _, _, raw in read_vectors()]


def test_vector_file_matches_the_packets() -> None:
    vectors = read_vectors()
    assert [(src, length) for src, length, _ in vectors] == [
        (p.src, len(p.payload)) for p in PACKETS
    ]
    assert b"".join(VECTOR_BYTES) == STREAM


def test_encoder_matches_go_byte_for_byte() -> None:
    encoder = GobEncoder()
    assert [encoder.encode(p) for p in PACKETS] == VECTOR_BYTES


def test_decoder_reads_each_vector() -> None:
    decoder = GobDecoder()
    for packet, raw in zip(PACKETS, VECTOR_BYTES, strict=True):
        assert decoder.feed(raw) == [packet]
        assert decoder.buffered_bytes == 0


def test_encoder_defines_the_type_once_per_stream() -> None:
    # The first vector is the 43-byte definition message, then the value.
    encoder = GobEncoder()
    assert encoder.encode(PACKETS[0]) == VECTOR_BYTES[0]
    assert encoder.encode(PACKETS[0]) == VECTOR_BYTES[0][43:]
    assert GobEncoder().encode(PACKETS[0]) == VECTOR_BYTES[0]


def test_empty_packet_is_an_empty_struct() -> None:
    encoder = GobEncoder()
    encoder.encode(PACKETS[0])
    raw = encoder.encode(UdpPacket("", b""))
    assert raw == bytes.fromhex("03ff8000")  # type 64, no fields, end of struct
    assert GobDecoder().feed(VECTOR_BYTES[0] + raw) == [PACKETS[0], UdpPacket("", b"")]


def test_stream_whole() -> None:
    decoder = GobDecoder()
    assert decoder.feed(STREAM) == PACKETS
    assert decoder.buffered_bytes == 0


def test_stream_every_two_way_split() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = GobDecoder()
        packets = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:])
        assert packets == PACKETS, cut


def test_stream_one_byte_at_a_time() -> None:
    decoder = GobDecoder()
    packets: list[UdpPacket] = []
    for index in range(len(STREAM)):
        packets += decoder.feed(STREAM[index : index + 1])
        assert decoder.buffered_bytes < 330  # never more than one message
    assert packets == PACKETS
    assert decoder.buffered_bytes == 0


def test_partial_message_is_buffered() -> None:
    decoder = GobDecoder()
    assert decoder.feed(STREAM[:50]) == []
    assert decoder.buffered_bytes == 50 - 43
    assert decoder.feed(b"") == []
    assert decoder.feed(STREAM[50:]) == PACKETS


# --- hand-built streams ------------------------------------------------------
# A tiny independent gob writer, so that tests can say what Go would send for
# other struct layouts and what a broken peer might send.


def u(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes((256 - len(raw),)) + raw


def i(value: int) -> bytes:
    return u(2 * value if value >= 0 else -2 * value - 1)


def s(raw: bytes) -> bytes:
    return u(len(raw)) + raw


def msg(body: bytes) -> bytes:
    return u(len(body)) + body


def definition(fields: list[tuple[bytes, int]], type_id: int = 64, name: bytes = b"T") -> bytes:
    """A struct type definition as Go's encoder writes it."""
    common = b"\x01" + s(name) + b"\x01" + i(type_id) + b"\x00"
    field_list = u(len(fields)) + b"".join(
        b"\x01" + s(n) + b"\x01" + i(t) + b"\x00" for n, t in fields
    )
    return msg(i(-type_id) + b"\x03\x01" + common + b"\x01" + field_list + b"\x00\x00")


def value(*fields: tuple[int, bytes], type_id: int = 64) -> bytes:
    """A struct value: (field delta, already encoded field value) pairs."""
    return msg(i(type_id) + b"".join(u(d) + v for d, v in fields) + b"\x00")


UDP_PACKET = definition([(b"Src", 6), (b"Payload", 5)], name=b"udpPacket")


def test_helpers_reproduce_the_go_definition() -> None:
    assert VECTOR_BYTES[0].startswith(UDP_PACKET)
    assert value((1, s(b"127.0.0.1:40001"))) == VECTOR_BYTES[1]


def test_integer_encodings() -> None:
    # Values at the one- and multi-byte boundaries, as lengths of a payload.
    decoder = GobDecoder(max_payload_bytes=70_000, max_message_bytes=80_000)
    decoder.feed(UDP_PACKET)
    for size in (0, 1, 127, 128, 255, 256, 65535, 65536):
        payload = bytes(size % 251 for _ in range(size))
        raw = GobEncoder(max_payload_bytes=70_000).encode(UdpPacket("a", payload))
        assert decoder.feed(raw[len(UDP_PACKET) :]) == [UdpPacket("a", payload)]
    # A non-minimal integer (two bytes for 5) is still read.
    assert decoder.feed(msg(b"\xff\x80\x02\xfe\x00\x01x\x00")) == [UdpPacket("", b"x")]


def test_extra_basic_fields_are_skipped() -> None:
    # A peer with udpPacket{Src, Dst string; Payload []byte} and other scalars.
    fields = [(b"Src", 6), (b"Dst", 6), (b"N", 2), (b"C", 7), (b"B", 1), (b"Payload", 5)]
    stream = definition(fields) + value(
        (1, s(b"10.0.0.1:5")),
        (1, s(b"10.0.0.2:53")),
        (1, i(-300)),
        (1, u(1) + u(2)),
        (1, u(1)),
        (1, s(b"data")),
    )
    assert GobDecoder().feed(stream) == [UdpPacket("10.0.0.1:5", b"data")]


def test_fields_in_another_order_or_missing() -> None:
    stream = definition([(b"Payload", 5), (b"Src", 6)]) + value((1, s(b"p")), (1, s(b"s")))
    assert GobDecoder().feed(stream) == [UdpPacket("s", b"p")]
    only_payload = definition([(b"Payload", 5)]) + value((1, s(b"p")))
    assert GobDecoder().feed(only_payload) == [UdpPacket("", b"p")]


def test_explicit_zero_values_are_accepted() -> None:
    stream = UDP_PACKET + value((1, s(b"")), (1, s(b"")))
    assert GobDecoder().feed(stream) == [UdpPacket("", b"")]


def test_source_bytes_survive_as_surrogate_escapes() -> None:
    stream = UDP_PACKET + value((1, s(b"h\xffst:1")))
    (packet,) = GobDecoder().feed(stream)
    assert packet.src == "h\udcffst:1"
    assert GobEncoder().encode(packet) == stream


BROKEN = [
    (value((1, s(b"x"))), "undefined type id 64"),
    (UDP_PACKET + value((1, s(b"x")), type_id=65), "undefined type id 65"),
    (UDP_PACKET + definition([(b"Src", 6)], type_id=65), "second gob type definition"),
    (definition([(b"Src", 6)], type_id=6), "predeclared type id 6"),
    (msg(i(-64) + b"\x02\x00\x00"), "not a struct"),
    (msg(i(-64) + b"\x00"), "empty gob type definition"),
    (msg(i(-64) + b"\x08\x00"), "field number 7"),
    (definition([(b"Src", 2), (b"Payload", 5)]), "field 'Src' has type id 2"),
    (definition([(b"Src", 6), (b"Payload", 6)]), "field 'Payload' has type id 6"),
    (definition([(b"Src", 6), (b"x" * 257, 6)]), "name of 257 bytes exceeds the limit of 256"),
    (definition([(b"Src", 6)], name=b"u" * 257), "name of 257 bytes exceeds"),
    (definition([(b"Src", 6), (b"Next", 65)]), "not a basic type"),
    (definition([(b"Src", 6), (b"Src", 6)]), "repeats a field name"),
    (definition([(b"A", 6), (b"B", 5)]), "neither Src nor Payload"),
    (definition([(b"F%d" % n, 1) for n in range(17)]), "17 fields"),
    (UDP_PACKET + value((3, s(b"x"))), "field number 2"),
    (UDP_PACKET + value((1, s(b"x")), (0xFFFF_FFFF_FFFF_FFFF, b"")), "field number"),
    (UDP_PACKET + value((2, s(b"\xab" * 9013))), "UDP packet of 9013 bytes exceeds"),
    (UDP_PACKET + value((1, s(b"a" * 2049))), "source address of 2049 bytes"),
    (UDP_PACKET + msg(b"\xff\x80\x00\x00"), "1 stray bytes"),
    (UDP_PACKET + msg(b"\xff\x80\x01\x05abc\x00"), "ends in the middle"),
    (UDP_PACKET + msg(b"\xff\x80\x01\xf7" + bytes(9)), "claims 9 bytes"),
    (UDP_PACKET + msg(b"\xff\x80\x01\x80"), "claims 128 bytes"),
    (UDP_PACKET + msg(b"\xff"), "ends in the middle"),
    (b"\x00", "empty gob message"),
    (b"\xf7" + bytes(9), "length claims 9 bytes"),
    (b"\xfd\x01\x00\x01", "65537 bytes exceeds the limit of 65536"),
]


@pytest.mark.parametrize(("stream", "fragment"), BROKEN, ids=[f for _, f in BROKEN])
def test_broken_streams_raise_gob_error(stream: bytes, fragment: str) -> None:
    decoder = GobDecoder()
    with pytest.raises(GobError) as info:
        decoder.feed(stream)
    assert fragment in str(info.value)
    with pytest.raises(GobError, match="already failed"):
        decoder.feed(VECTOR_BYTES[0])


def test_oversized_message_is_refused_from_its_length_alone() -> None:
    with pytest.raises(GobError, match="exceeds the limit of 100"):
        GobDecoder(max_message_bytes=100).feed(b"\xff\x65")


def test_limits_are_constructor_arguments() -> None:
    stream = UDP_PACKET + value((1, s(b"abcd")), (1, s(b"12345")))
    assert GobDecoder(max_src_bytes=4, max_payload_bytes=5).feed(stream)
    with pytest.raises(GobError, match="source address of 4 bytes exceeds the limit of 3"):
        GobDecoder(max_src_bytes=3).feed(stream)
    with pytest.raises(GobError, match="UDP packet of 5 bytes exceeds the limit of 4"):
        GobDecoder(max_payload_bytes=4).feed(stream)
    assert GobDecoder(max_message_bytes=42).feed(stream)  # the definition is the largest
    with pytest.raises(GobError, match="message of 42 bytes exceeds the limit of 41"):
        GobDecoder(max_message_bytes=41).feed(stream)


def test_gob_error_is_a_remote_protocol_error() -> None:
    assert issubclass(GobError, RemoteProtocolError)


def test_encoder_refuses_what_peers_would_not_take() -> None:
    encoder = GobEncoder()
    assert encoder.encode(UdpPacket("a", bytes(MAX_PAYLOAD_BYTES)))
    with pytest.raises(LocalProtocolError, match="9013 bytes exceeds the limit of 9012 bytes"):
        encoder.encode(UdpPacket("a", bytes(MAX_PAYLOAD_BYTES + 1)))
    with pytest.raises(LocalProtocolError, match="not encodable"):
        encoder.encode(UdpPacket("\ud800", b"x"))
    with pytest.raises(LocalProtocolError, match="limit of 3"):
        GobEncoder(max_payload_bytes=3).encode(UdpPacket("a", b"1234"))


# --- hypothesis --------------------------------------------------------------

packets = st.builds(
    UdpPacket,
    st.text(max_size=300),
    st.binary(max_size=MAX_PAYLOAD_BYTES) | st.binary(max_size=20),
)


def feed_in_chunks(decoder: GobDecoder, data: bytes, cuts: list[int]) -> list[UdpPacket]:
    out: list[UdpPacket] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out += decoder.feed(data[start:cut])
        start = cut
    return out + decoder.feed(data[start:])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets, min_size=1, max_size=6), st.lists(st.integers(0, 2**20), max_size=12))
@example([UdpPacket("\U0001f600" * 300, b"\xff" * MAX_PAYLOAD_BYTES)] * 2, [1, 5000, 9100])
@example([UdpPacket("", b""), UdpPacket("", b"")], [])
def test_round_trip_with_random_chunking(sent: list[UdpPacket], cuts: list[int]) -> None:
    encoder = GobEncoder()
    stream = b"".join(encoder.encode(p) for p in sent)
    decoder = GobDecoder()
    assert feed_in_chunks(decoder, stream, cuts) == sent
    assert decoder.buffered_bytes == 0


def decodes_or_raises_gob_error(data: bytes, cuts: list[int]) -> None:
    decoder = GobDecoder()
    try:
        packets = feed_in_chunks(decoder, data, cuts)
    except GobError:
        return
    assert all(isinstance(p, UdpPacket) for p in packets)
    assert all(len(p.payload) <= MAX_PAYLOAD_BYTES for p in packets)


chunk_cuts = st.lists(st.integers(0, 2**20), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), chunk_cuts)
def test_arbitrary_bytes_decode_or_raise_gob_error(data: bytes, cuts: list[int]) -> None:
    decodes_or_raises_gob_error(data, cuts)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), chunk_cuts)
def test_arbitrary_bytes_after_the_definition(data: bytes, cuts: list[int]) -> None:
    decodes_or_raises_gob_error(UDP_PACKET + data, cuts)


mutations = st.lists(
    st.tuples(
        st.sampled_from(["set", "insert", "delete"]), st.integers(0, 2**16), st.integers(0, 255)
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(mutations, chunk_cuts, st.integers(0, len(STREAM)))
def test_mutated_streams_decode_or_raise_gob_error(
    edits: list[tuple[str, int, int]], cuts: list[int], keep: int
) -> None:
    data = bytearray(STREAM[: max(keep, 1)])
    for action, where, byte in edits:
        at = where % (len(data) + 1)
        if action == "insert":
            data[at:at] = bytes((byte,))
        elif data and at < len(data):
            if action == "set":
                data[at] = byte
            else:
                del data[at]
    decodes_or_raises_gob_error(bytes(data), cuts)
