"""Our data-frame encoder against websockets' own parser, both sides, every length form."""

from __future__ import annotations

import pytest
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

from qanat.net.websocket import binary_frame


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
