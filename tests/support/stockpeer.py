"""A stock chisel peer built by hand: raw HTTP upgrade bytes and our own framing.

The compatibility tests must not trust qanat's WebSocket adapter to check
itself, so this module speaks to the gateway (and plays a stock server for the
connector) with bytes written here: the exact upgrade request outsystemscc
sends (shared/protocol/PROTOCOL.md section 2), a 101 answer without the
subprotocol echo as a stock chisel server gives, and RFC 6455 framing from
:mod:`support.wsframes`. Only SSH itself is borrowed from qanat.net.ssh, told
to authenticate as Go's ``x/crypto/ssh`` client does (section 3): empty user
name, ``none`` first, then ``password`` with an empty password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from qanat.net.ssh import SshTunnel, connect_tunnel
from support.timing import scaled
from support.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    accept_key,
    encode_frame,
    header,
    parse_http_head,
    split_http_head,
)

#: User authentication as chisel 1.11.5 and outsystemscc 2.0.11 send it.
GO_USER = ""
GO_PASSWORD = ""
GO_AUTH_METHODS = ("none", "password")

#: The Sec-WebSocket-Key from the observed outsystemscc request.
OBSERVED_KEY = "8HKtSryUbnMo2kHH+yHjOg=="
OBSERVED_QUERY = "id=868575457&ports=18082"


def outsystemscc_request(
    host: str,
    path: str,
    *,
    token: str | None,
    protocol: str | None = "chisel-v3",
    user_agent: str = "CloudConnector/2.0.11",
    query: str = OBSERVED_QUERY,
    key: str = OBSERVED_KEY,
) -> bytes:
    """The upgrade request head exactly as outsystemscc 2.0.11 sends it
    (header order and spelling included); ``None`` leaves a header out."""
    lines = [
        f"GET {path}?{query} HTTP/1.1" if query else f"GET {path} HTTP/1.1",
        f"Host: {host}",
        f"User-Agent: {user_agent}",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
    ]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    lines.append("Sec-WebSocket-Version: 13")
    if token is not None:
        lines.append(f"Token: {token}")
    lines.append("Upgrade: websocket")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stock_101(request_head: bytes) -> bytes:
    """What a stock chisel server answers: no Sec-WebSocket-Protocol echo."""
    _, headers = parse_http_head(request_head)
    key = header(headers, "Sec-WebSocket-Key")[0]
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


class HeadReader(asyncio.Protocol):
    """Collects an HTTP head; bytes after it wait in ``rest`` for the next protocol."""

    def __init__(self, on_head: Callable[[HeadReader, bytes], None] | None = None) -> None:
        self.transport: Any = None
        self.buffer = bytearray()
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.on_head = on_head

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.head.done():
            parts = split_http_head(bytes(self.buffer))
            if parts is not None:
                self.buffer = bytearray(parts[1])
                self.head.set_result(parts[0])
                if self.on_head is not None:
                    self.on_head(self, parts[0])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionError(f"closed before a full HTTP head: {exc}"))


class HandFramed(asyncio.Transport):
    """Our own WebSocket framing, shown to an upper protocol (asyncssh) as a transport.

    Also the protocol of the TCP transport: frames in, payloads up. Client
    side frames are masked (``mask=True``), server side frames are not.
    """

    def __init__(self, tcp: Any, upper: asyncio.Protocol, *, mask: bool) -> None:
        super().__init__()
        self.tcp = tcp
        self.upper = upper
        self.mask = mask
        self.reader = FrameReader()
        self.frames_in: list[Any] = []
        self.closing = False

    @classmethod
    def attach(cls, head: HeadReader, upper: asyncio.Protocol, *, mask: bool) -> HandFramed:
        framed = cls(head.transport, upper, mask=mask)
        proto = _FramedProtocol(framed)
        head.transport.set_protocol(proto)
        upper.connection_made(framed)
        if head.buffer:
            proto.data_received(bytes(head.buffer))
        return framed

    # transport side (called by the upper protocol)
    def write(self, data: Any) -> None:
        if not self.closing:
            self.tcp.write(encode_frame(OP_BINARY, bytes(data), mask=self.mask))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def send_raw(self, data: bytes) -> None:
        self.tcp.write(data)

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.tcp.write(encode_frame(OP_CLOSE, b"\x03\xe8", mask=self.mask))
            self.tcp.close()

    def abort(self) -> None:
        self.closing = True
        self.tcp.abort()

    def is_closing(self) -> bool:
        return self.closing or bool(self.tcp.is_closing())

    def pause_reading(self) -> None:
        self.tcp.pause_reading()

    def resume_reading(self) -> None:
        self.tcp.resume_reading()

    def is_reading(self) -> bool:
        return bool(self.tcp.is_reading())

    def get_write_buffer_size(self) -> int:
        return int(self.tcp.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.tcp.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.tcp.get_extra_info(name, default)


class _FramedProtocol(asyncio.Protocol):
    def __init__(self, framed: HandFramed) -> None:
        self.f = framed

    def data_received(self, data: bytes) -> None:
        f = self.f
        for frame in f.reader.feed(data):
            f.frames_in.append(frame)
            if frame.opcode in (OP_BINARY, OP_CONT, OP_TEXT):
                if frame.payload:
                    f.upper.data_received(frame.payload)
            elif frame.opcode == OP_PING:
                f.tcp.write(encode_frame(OP_PONG, frame.payload, mask=f.mask))
            elif frame.opcode == OP_CLOSE and not f.closing:
                f.closing = True
                f.tcp.write(encode_frame(OP_CLOSE, frame.payload[:2], mask=f.mask))
                f.tcp.close()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.f.upper.pause_writing()

    def resume_writing(self) -> None:
        self.f.upper.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.f.closing = True
        self.f.upper.connection_lost(exc)


async def open_upgraded(
    port: int, request: bytes, host: str = "127.0.0.1"
) -> tuple[HeadReader, bytes]:
    """Connect, send ``request`` and wait for the response head."""
    loop = asyncio.get_running_loop()
    _, reader = await loop.create_connection(HeadReader, host, port)
    reader.transport.write(request)
    async with asyncio.timeout(scaled(5)):
        head = await reader.head
    return reader, head


async def go_style_ssh(
    attach: Callable[[asyncio.Protocol], Any],
    dialer: Callable[[str], Any],
    *,
    user: str = GO_USER,
    password: str = GO_PASSWORD,
    methods: tuple[str, ...] = GO_AUTH_METHODS,
) -> SshTunnel:
    """SSH client over ``attach`` authenticating as Go's client does by default."""
    return await connect_tunnel(
        attach,
        dialer,
        username=user,
        password=password,
        auth_methods=methods,
        timeout_s=scaled(10),
    )
