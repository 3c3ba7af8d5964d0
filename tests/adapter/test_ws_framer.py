"""Our data-frame encoder against websockets' own parser, both sides, every length form."""

from __future__ import annotations

import asyncio
import random

import pytest
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

from qanat.net.websocket import _Link, binary_frame
from support.wsframes import OP_BINARY, OP_PING, encode_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
@pytest.mark.parametrize("masked", [True, False])
def test_binary_frame_parses_as_one_final_binary_frame(size, masked):
    # A client's frames are masked and read by a server, and the reverse.
    reader = Protocol(Side.SERVER if masked else Side.CLIENT, state=State.OPEN, max_size=1 << 20)
    data = bytes(i % 251 for i in range(size))
    reader.receive_data(b"".join(binary_frame(data, masked)))
    (frame,) = reader.events_received()
    assert frame.opcode is Opcode.BINARY
    assert frame.fin
    assert bytes(frame.data) == data
    assert reader.parser_exc is None


def test_an_unmasked_frame_to_a_server_is_refused_by_it():
    # The mask bit matters: websockets' server refuses an unmasked client frame.
    reader = Protocol(Side.SERVER, state=State.OPEN)
    reader.receive_data(b"".join(binary_frame(b"x", masked=False)))
    assert reader.parser_exc is not None


# -- our data-frame parser: payload passed on as it arrives ---------------------


class _Wire:
    """The TCP transport under a link: records what the link writes."""

    def __init__(self) -> None:
        self.written = bytearray()

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += chunk

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


class _Upper(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def data_received(self, data: bytes) -> None:
        self.data += data


def _cuts(stream: bytes, how: str) -> list[bytes]:
    if how == "bytes":
        return [stream[i : i + 1] for i in range(len(stream))]
    if how == "whole":
        return [stream]
    rng = random.Random(how)
    points = sorted(rng.sample(range(1, len(stream)), 40))
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


@pytest.mark.parametrize("how", ["bytes", "whole", "seed1", "seed2", "seed3"])
@pytest.mark.parametrize("masked", [True, False])
async def test_split_frames_reach_the_upper_protocol_unchanged(masked, how):
    # Frames cut anywhere (inside a header, a mask key, a payload, a ping)
    # give the upper protocol the same bytes, unmasked at the right phase,
    # and a ping in between is still answered.
    payloads = [bytes((i * 7 + k) % 251 for i in range(n)) for k, n in enumerate((5, 1000, 70_001))]
    stream = b"".join(
        (
            encode_frame(OP_BINARY, payloads[0], mask=masked),
            encode_frame(OP_PING, b"p", mask=masked),
            encode_frame(OP_BINARY, payloads[1], mask=masked),
            encode_frame(OP_BINARY, payloads[2], mask=masked),
        )
    )
    side = Side.SERVER if masked else Side.CLIENT
    wire, upper = _Wire(), _Upper()
    link = _Link(wire, Protocol(side, state=State.OPEN, max_size=1 << 20), upper)  # type: ignore[arg-type]
    link.fast = True
    for piece in _cuts(stream, how):
        link.data_received(piece)
    assert upper.data == b"".join(payloads)
    assert not link.rbuf
    assert not link.rest
    assert b"\x8a" in wire.written  # the pong
