"""qanat's UDP gob codec (wire/gob.py) against Go's own encoding/gob, in the peer.

Go's encoder, run by ``gopeer gob encode``, must give the byte vectors of
PROTOCOL.md (so the peer's UDP path is the real thing), and each side must
read what the other writes, for a batch of random packets.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
from pathlib import Path

from qanat.wire.gob import MAX_PAYLOAD_BYTES, GobDecoder, GobEncoder, UdpPacket
from support.timing import scaled

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
VECTOR_PACKETS = [
    UdpPacket("127.0.0.1:40001", b"hello"),
    UdpPacket("127.0.0.1:40001", b""),
    UdpPacket("[::1]:53", b"\xab" * 300),
    UdpPacket("", b"x"),
]


def go_gob(gopeer: Path, mode: str, data: bytes) -> bytes:
    done = subprocess.run(
        [str(gopeer), "gob", mode],
        input=data,
        capture_output=True,
        timeout=scaled(30),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def as_json_lines(packets: list[UdpPacket]) -> bytes:
    return b"".join(
        json.dumps({"Src": p.src, "Payload": base64.b64encode(p.payload).decode()}).encode() + b"\n"
        for p in packets
    )


def from_json_lines(text: bytes) -> list[UdpPacket]:
    docs = [json.loads(line) for line in text.splitlines()]
    return [UdpPacket(d["Src"], base64.b64decode(d["Payload"] or "")) for d in docs]


def random_packets(seed: int, count: int) -> list[UdpPacket]:
    rng = random.Random(seed)
    hosts = ["127.0.0.1", "10.0.0.5", "[::1]", "[fe80::1%eth0]", "", "ünï.example"]
    packets = []
    for _ in range(count):
        src = f"{rng.choice(hosts)}:{rng.randrange(65536)}" if rng.random() < 0.9 else ""
        size = rng.choice([0, 1, 2, 127, 128, 255, 256, 1500, MAX_PAYLOAD_BYTES])
        packets.append(UdpPacket(src, rng.randbytes(size)))
    return packets


def with_type_id(stream: bytes, type_id: int) -> bytes:
    """The vector stream (type id 64) as an encoder numbering ``udpPacket``
    ``type_id`` writes it: Go before 1.20 gives the first user type id 65,
    later ones 64 (chisel 1.11.5's build); decoders take any id.

    Only the id's bytes change: the definition's length prefix and leading
    ``-id``, the id inside its CommonType, and each value message's ``id``.
    """
    if type_id == 64:
        return stream
    assert type_id == 65, f"unexpected gob type id {type_id}"
    assert stream.count(b"\xff") == 2 + 3, "the vector payloads hold no 0xff byte"
    head, rest = stream[:2], stream[2:]
    assert head == b"*\x7f"  # 42-byte message, int -64
    return b"+\xff\x81" + rest.replace(b"\xff\x80", b"\xff\x82")


def test_go_encoder_gives_the_protocol_vectors(gopeer: Path) -> None:
    stream = go_gob(gopeer, "encode", as_json_lines(VECTOR_PACKETS))
    type_id = 64 if stream.startswith(b"*\x7f") else 65
    assert stream == with_type_id((VECTORS / "chisel-udp-gob-stream.bin").read_bytes(), type_id)


def test_go_decodes_what_qanat_encodes(gopeer: Path) -> None:
    packets = random_packets(10, 300)
    encoder = GobEncoder()
    stream = b"".join(encoder.encode(p) for p in packets)
    assert from_json_lines(go_gob(gopeer, "decode", stream)) == packets


def test_qanat_decodes_what_go_encodes_in_any_chunking(gopeer: Path) -> None:
    packets = random_packets(11, 300)
    stream = go_gob(gopeer, "encode", as_json_lines(packets))
    rng = random.Random(12)
    decoder = GobDecoder()
    got: list[UdpPacket] = []
    at = 0
    while at < len(stream):
        step = rng.choice([1, 2, 3, 7, 64, 1000, 9100])
        got += decoder.feed(stream[at : at + step])
        at += step
    assert got == packets
    assert decoder.buffered_bytes == 0
