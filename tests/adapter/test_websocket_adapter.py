"""The WebSocket adapter (qanat.net.websocket): handshakes and framing.

- Frame boundaries carry no meaning (PROTOCOL.md section 3): a relay that
  re-cuts every frame, merges frames, fragments messages and slips control
  frames in between must not change a byte of the tunnel.
- The connector's handshake against scripted servers: a 101 with or without
  the subprotocol echo, refusals (401/403 become AuthError with the body),
  a wrong accept key, silence, early close, an oversized answer.
- The gateway's limits: an oversized frame closes the tunnel with 1009.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from qanat.errors import AuthError, HandshakeError
from qanat.net.websocket import client_handshake
from support.servers import Relay, echo_server, free_port, roundtrip
from support.stockpeer import HandFramed, open_upgraded, outsystemscc_request, stock_101
from support.timing import eventually, scaled
from support.tunnels import running_gateway, serving_connector
from support.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    FrameReader,
    accept_key,
    encode_frame,
    split_http_head,
)

# -- frame boundaries carry no meaning --------------------------------------------


class Reframer:
    """Rewrites one direction of a WebSocket stream: same payload bytes,
    different frames. Data is cut at random points, merged across frames,
    sent as fragmented messages, with pings slipped in between."""

    def __init__(self, *, mask: bool, seed: int) -> None:
        self.mask = mask
        self.rng = random.Random(seed)
        self.head = bytearray()
        self.head_done = False
        self.reader = FrameReader()
        self.pings = 0
        self.recuts = 0

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        if not self.head_done:
            self.head += data
            parts = split_http_head(bytes(self.head))
            if parts is None:
                return b""
            out += parts[0]
            self.head_done = True
            data = parts[1]
        pending = bytearray()
        for frame in self.reader.feed(data):
            if frame.opcode in (OP_BINARY, OP_CONT):
                pending += frame.payload
                continue
            out += self._recut(bytes(pending))
            pending.clear()
            out += encode_frame(frame.opcode, frame.payload, mask=self.mask, fin=frame.fin)
        out += self._recut(bytes(pending))
        return bytes(out)

    def _recut(self, payload: bytes) -> bytes:
        if not payload:
            return b""
        self.recuts += 1
        rng = self.rng
        cuts = sorted(rng.sample(range(1, len(payload)), min(len(payload) - 1, rng.randint(0, 6))))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        out = bytearray()
        if rng.random() < 0.3:
            self.pings += 1
            out += encode_frame(OP_PING, b"reframer", mask=self.mask)
        if rng.random() < 0.5:
            # One fragmented message: BINARY (fin=0), CONT..., CONT (fin=1).
            for i, piece in enumerate(pieces):
                opcode = OP_BINARY if i == 0 else OP_CONT
                out += encode_frame(opcode, piece, mask=self.mask, fin=i == len(pieces) - 1)
        else:
            for piece in pieces:
                out += encode_frame(OP_BINARY, piece, mask=self.mask)
        return bytes(out)


async def test_frame_boundaries_carry_no_meaning(tmp_path):
    reframers: list[Reframer] = []

    def make(mask: bool) -> Callable[[bytes], bytes]:
        reframer = Reframer(mask=mask, seed=len(reframers))
        reframers.append(reframer)
        return reframer

    payload = os.urandom(300_000)
    async with (
        running_gateway(tmp_path) as env,
        echo_server() as eport,
        Relay(
            env.port, up_transform=lambda: make(True), down_transform=lambda: make(False)
        ) as relay,
    ):
        port = free_port()
        relayed = env.address.replace(f":{env.port}/", f":{relay.port}/")
        async with serving_connector(env, [f"R:{port}:127.0.0.1:{eport}"], address=relayed):
            for size in (1, 100, 40_000):
                assert await roundtrip(port, payload[:size]) == payload[:size]
            results = await asyncio.gather(*(roundtrip(port, payload) for _ in range(3)))
            assert results == [payload] * 3
    # The connections of the address GET carry no frames; the tunnel's both did.
    framed = [r for r in reframers if r.recuts]
    assert len(framed) == 2
    assert all(r.pings > 0 for r in framed), "the relay never slipped a ping in"


# -- the connector's handshake against scripted servers ------------------------------


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: Any = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Scripted:
    """A server that answers the upgrade with fixed bytes and records the rest."""

    def __init__(self, reply: Callable[[bytes], bytes] | None, close: bool) -> None:
        self.reply = reply
        self.close = close
        self.heads: list[bytes] = []
        self.after = bytearray()
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if self.reply is not None:
                writer.write(self.reply(head))
            if self.close:
                writer.close()
                return
            while data := await reader.read(65536):
                self.after += data
        except (ConnectionError, asyncio.IncompleteReadError):
            pass


@asynccontextmanager
async def scripted_server(
    reply: Callable[[bytes], bytes] | None, *, close: bool = False
) -> AsyncIterator[Scripted]:
    scripted = Scripted(reply, close)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    scripted.port = server.sockets[0].getsockname()[1]
    try:
        yield scripted
    finally:
        server.close()
        for writer in scripted.writers:
            writer.transport.abort()
        await server.wait_closed()


async def handshake(port: int, timeout_s: float = 5.0) -> tuple[Any, Any, Recorder]:
    transport, response, upper, _ = await handshake_tcp(port, timeout_s)
    return transport, response, upper


async def handshake_tcp(port: int, timeout_s: float = 5.0) -> tuple[Any, Any, Recorder, Any]:
    loop = asyncio.get_running_loop()
    tcp, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    upper = Recorder()
    url = f"ws://127.0.0.1:{port}/sg_x?id=123456789&ports=1"
    try:
        transport, response = await client_handshake(
            tcp, url, [("User-Agent", "test"), ("token", "abc")], upper, timeout_s=timeout_s
        )
    except BaseException:
        tcp.abort()
        raise
    return transport, response, upper, tcp


def with_frames(head_reply: Callable[[bytes], bytes], *payloads: bytes) -> Callable[[bytes], bytes]:
    """A reply of the head plus server frames in the same write."""
    return lambda head: (
        head_reply(head) + b"".join(encode_frame(OP_BINARY, p, mask=False) for p in payloads)
    )


async def test_client_accepts_101_without_subprotocol_echo(tmp_path):
    reply = with_frames(stock_101, b"SSH-chisel-v3-server\r\n")
    async with scripted_server(reply) as server:
        transport, response, upper = await handshake(server.port)
        assert response.status_code == 101
        assert "Sec-WebSocket-Protocol" not in response.headers
        # Frames that arrived in the same read as the 101 are not lost.
        assert bytes(upper.data) == b"SSH-chisel-v3-server\r\n"
        transport.write(b"SSH-chisel-v3-client\r\n")
        await eventually(lambda: len(server.after) >= 28, "client frame at the server")
        (frame,) = FrameReader().feed(bytes(server.after))
        assert (frame.opcode, frame.masked, frame.payload) == (
            OP_BINARY,
            True,
            b"SSH-chisel-v3-client\r\n",
        )
        transport.close()
        await eventually(lambda: upper.lost.done(), "connection_lost after close")
        assert FrameReader().feed(bytes(server.after))[-1].opcode == OP_CLOSE


async def test_writes_between_the_peers_eof_and_connection_lost_are_dropped(tmp_path):
    """The peer's EOF closes the WebSocket a moment before connection_lost
    reaches the SSH layer; what SSH writes in between (a disconnect message,
    an endpoint's data) must be dropped, not raise out of the transport."""
    async with scripted_server(stock_101) as server:
        transport, _, upper, tcp = await handshake_tcp(server.port)
        # What the loop does on the peer's FIN: eof_received(), then (it
        # returned False) close the transport, which calls connection_lost later.
        assert not tcp.get_protocol().eof_received()
        transport.write(b"SSH disconnect message")
        transport.writelines([b"late", b"data"])
        tcp.close()
        await eventually(lambda: upper.lost.done(), "connection_lost after the EOF")


async def test_client_accepts_101_with_subprotocol_echo(tmp_path):
    def reply(head: bytes) -> bytes:
        return stock_101(head)[:-2] + b"Sec-WebSocket-Protocol: chisel-v3\r\n\r\n"

    async with scripted_server(reply) as server:
        transport, response, _ = await handshake(server.port)
        assert response.headers["Sec-WebSocket-Protocol"] == "chisel-v3"
        transport.close()


async def test_client_rejects_a_wrong_accept_key(tmp_path):
    def reply(head: bytes) -> bytes:
        wrong = accept_key("AAAAAAAAAAAAAAAAAAAAAA==").encode()
        good = stock_101(head)
        start = good.index(b"Accept: ") + len(b"Accept: ")
        return good[:start] + wrong + good[good.index(b"\r\n", start) :]

    async with scripted_server(reply) as server:
        with pytest.raises(HandshakeError, match="WebSocket upgrade failed"):
            await handshake(server.port)


@pytest.mark.parametrize(
    ("status", "reason", "auth"),
    [(401, "Unauthorized", True), (403, "Forbidden", True), (404, "Not Found", False)],
)
async def test_client_reports_refusals_with_status_and_body(tmp_path, status, reason, auth):
    body = b"token rejected: check the token header\n"

    def reply(head: bytes) -> bytes:
        return (
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body

    async with scripted_server(reply) as server:
        with pytest.raises(HandshakeError) as caught:
            await handshake(server.port)
    assert isinstance(caught.value, AuthError) is auth
    assert caught.value.status == status
    assert caught.value.body == "token rejected: check the token header"
    assert str(caught.value) == (
        f"gateway refused the tunnel: HTTP {status} {reason}: "
        "token rejected: check the token header"
    )


async def test_client_handshake_fails_cleanly_when_the_server_closes(tmp_path):
    async with scripted_server(None, close=True) as server:
        with pytest.raises(HandshakeError, match="did not receive a valid HTTP response"):
            await handshake(server.port)


async def test_client_handshake_times_out_on_silence(tmp_path):
    async with scripted_server(None) as server:
        with pytest.raises(HandshakeError, match="no answer to the WebSocket upgrade within"):
            await handshake(server.port, timeout_s=scaled(0.2))


async def test_client_handshake_refuses_an_endless_response_head(tmp_path):
    def reply(head: bytes) -> bytes:
        return b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Filler: abcdefgh\r\n" * 5000

    async with scripted_server(reply) as server:
        with pytest.raises(HandshakeError):
            await handshake(server.port)


# -- the gateway's limits ---------------------------------------------------------


async def test_gateway_closes_a_tunnel_on_an_oversized_frame(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qanat")
    async with running_gateway(tmp_path, max_frame_bytes=64 * 1024) as env:
        request = outsystemscc_request(
            f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
        )
        head_reader, head = await open_upgraded(env.port, request)
        assert head.startswith(b"HTTP/1.1 101 ")
        upper = Recorder()
        framed = HandFramed.attach(head_reader, upper, mask=True)
        await eventually(lambda: upper.data.startswith(b"SSH-chisel-v3-server"), "server version")
        # A frame header announcing 1 MiB, then a little of it.
        framed.send_raw(bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 20) + os.urandom(4) + b"x")
        await eventually(lambda: upper.lost.done(), "gateway to close the connection")
        closes = [f for f in framed.frames_in if f.opcode == OP_CLOSE]
        assert closes, "no close frame"
        assert struct.unpack("!H", closes[0].payload[:2])[0] == 1009
        await eventually(lambda: not env.gateway.tunnels, "tunnel removed")
    lines = [r.getMessage() for r in caplog.records if "tunnel setup ended" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].endswith(
        "tunnel setup ended: invalid WebSocket data: "
        "frame with 1048576 bytes exceeds limit of 65536 bytes"
    )
