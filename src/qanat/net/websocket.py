"""WebSocket framing: websockets' sans-IO protocol driven by asyncio callbacks.

After the HTTP upgrade a chisel tunnel is a byte stream carried in binary
frames. :class:`FramedTransport` shows that stream to an upper
:class:`asyncio.Protocol` (the SSH connection) as an ordinary transport:
``write()`` sends one binary frame and every data frame's payload goes to
``upper.data_received()`` as it arrives, in pieces if the frame comes in
several reads. Frame boundaries carry no meaning, exactly as the
chisel peers treat them.

Data frames are framed by this module itself both ways (a few lines, and
several times cheaper a frame than websockets' general protocol, see
docs/benchmarks.md); websockets keeps the handshakes, the close handshake,
control frames and every error, and its parser always stands at a frame
boundary.

Every callback runs to completion; there is no task and no queue between the
socket and the SSH layer. The link is an ``asyncio.BufferedProtocol``:
uvloop decrypts each TLS read straight into one read buffer shared by every
link of the process, and a data frame's payload goes up as a view of it, so
an upper protocol copies what it keeps (the SSH layer's receive buffer
does) and must not hold the view past ``data_received``.

Flow control passes straight through: the SSH layer pausing its reading
pauses the socket, and the socket's write buffer filling
up pauses the SSH layer. It also pauses *reading* from the peer: whatever a
peer sends may make us answer (a WebSocket pong, an SSH ping reply), so a
peer that does not read what we send does not get read either. What one
tunnel can make us hold is thus bounded by the socket's write-buffer high
water mark plus the answers to one read.

Handshakes: the gateway's front door hands the request head to
:class:`ServerUpgrade` (websockets' ``ServerProtocol`` inside), reads the
parsed :class:`UpgradeRequest`, and either accepts (101, then
:meth:`ServerUpgrade.attach`) or answers with :func:`response_bytes`; the
connector uses :func:`client_handshake`. No other module imports websockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, Side, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C part
    from websockets.utils import apply_mask
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from qanat.errors import AuthError, HandshakeError
from qanat.wire.handshake import SUBPROTOCOL

log = logging.getLogger("qanat.ws")

#: Largest frame accepted. chisel peers send one SSH write per frame (at most
#: ~35 KiB); 1 MiB leaves room without letting a peer make us buffer more.
DEFAULT_MAX_FRAME_BYTES = 1 << 20
#: Longest HTTP response head the connector reads during the handshake.
MAX_RESPONSE_BYTES = 64 * 1024

_DATA_OPCODES = (Opcode.BINARY, Opcode.CONT, Opcode.TEXT)
#: Frames smaller than this are written as one chunk (one TLS record); a
#: larger one fills whole records anyway, and joining would copy it.
_JOIN_BELOW_BYTES = 16 * 1024


def binary_frame(data: bytes, masked: bool) -> list[bytes]:
    """One final binary frame (RFC 6455 §5.2) as chunks for ``writelines``;
    a client's is masked with a fresh random key."""
    n = len(data)
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x82, bit | n))
    elif n < 65536:
        head = bytes((0x82, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return [head, data]
    key = _mask_keys.next()
    return [head, key, apply_mask(data, key)]


class _MaskKeys:
    """Masking keys from the OS's random source, fetched 1,024 at a time
    (one ``getrandom`` call per frame was three system calls per app
    connection on the connector)."""

    __slots__ = ("_pool", "_pos")

    BATCH = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos >= len(self._pool):
            self._pool = os.urandom(self.BATCH)
            pos = 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


_mask_keys = _MaskKeys()


class FramedTransport(asyncio.Transport):
    """The tunnel's byte stream, as a transport for the upper protocol."""

    def __init__(self, link: _Link) -> None:
        super().__init__(extra=None)
        self._link = link

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._link.send(data)

    def writelines(self, list_of_data: Any) -> None:
        # The SSH layer calls this once per event-loop iteration with every
        # packet of the iteration: one frame, written now (a second deferral
        # here would cost one more loop iteration of latency per message).
        self._link.send_now(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a WebSocket tunnel has no half-close")

    def close(self) -> None:
        self._link.close()

    def abort(self) -> None:
        self._link.abort()

    def is_closing(self) -> bool:
        return self._link.closing

    def pause_reading(self) -> None:
        self._link.set_paused(upper=True)

    def resume_reading(self) -> None:
        self._link.set_paused(upper=False)

    def is_reading(self) -> bool:
        return not self._link.upper_paused

    def get_write_buffer_size(self) -> int:
        return self._link.tcp.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._link.tcp.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # The SSH layer asks for the socket to set TCP options; give it the
        # real one, and the real peer address for its logs.
        return self._link.tcp.get_extra_info(name, default)


#: The read buffer of the links: as large as uvloop's largest TLS read.
READ_BUFFER_BYTES = 256 * 1024


class _ReadBuffer:
    """The one read buffer of every link in the process (they run on one loop).

    A read is decrypted into it and handed up before the next read can
    begin, so one buffer serves every tunnel; a gateway with a thousand
    connectors does not hold a thousand of them. Should a read ever begin
    while another is being handed up (nothing does that today), it gets a
    buffer of its own for that read.
    """

    __slots__ = ("busy", "view")

    def __init__(self) -> None:
        self.view: memoryview | None = None
        self.busy = False

    def get(self) -> memoryview:
        if self.busy:
            return memoryview(bytearray(READ_BUFFER_BYTES))
        view = self.view
        if view is None:  # allocated at the first read, not at import
            view = self.view = memoryview(bytearray(READ_BUFFER_BYTES))
        return view


_READ_BUFFER = _ReadBuffer()


class _Link(asyncio.BufferedProtocol):
    """Lower protocol on the TCP transport once the upgrade is done.

    A ``BufferedProtocol`` and *not* an ``asyncio.Protocol``: uvloop's TLS
    transport reads into the protocol's buffer only then. As a plain protocol
    every TLS read allocated a fresh 256 KiB ``bytes`` (twice: the last,
    empty read too) and shrank it, which cost glibc ``mmap``/``munmap`` or
    ``brk`` calls and fresh pages per read (docs/benchmarks.md).
    """

    def __init__(self, tcp: asyncio.Transport, ws: Protocol, upper: asyncio.Protocol) -> None:
        self.tcp = tcp
        self.ws = ws
        self.upper = upper
        self.closing = False
        self.transport = FramedTransport(self)
        self.close_reason = ""
        self.loop = asyncio.get_running_loop()
        self.flush_scheduled = False
        self.masked = ws.side is Side.CLIENT
        self.expect_masked = not self.masked
        #: Our own frame parser is on only where websockets' parser is known
        #: to stand at a frame boundary (see attach_server / client_handshake).
        self.fast = False
        self.rbuf = bytearray()
        #: Payload bytes of the current data frame still to come, its mask
        #: and where in the mask the next byte falls.
        self.rest = 0
        self.mask = b""
        self.mask_phase = 0
        limit = ws.max_message_size
        self.max_frame = limit if limit is not None else 1 << 62
        # Reading from the peer stops while the upper protocol asks for it or
        # while our output to the peer is backed up (see the module docstring).
        self.upper_paused = False
        self.output_backed_up = False
        self._rview: memoryview | None = None

    def set_paused(self, *, upper: bool | None = None, output: bool | None = None) -> None:
        if upper is not None:
            self.upper_paused = upper
        if output is not None:
            self.output_backed_up = output
        if self.closing or self.tcp.is_closing():
            return
        if self.upper_paused or self.output_backed_up:
            self.tcp.pause_reading()
        else:
            self.tcp.resume_reading()

    # -- upper -> wire -------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        # Frames are written once per event-loop iteration: one writev for
        # every frame of the iteration costs one syscall instead of one per
        # frame (measured in docs/benchmarks.md).
        # After the peer's EOF the WebSocket is CLOSED before connection_lost
        # reaches the upper protocol; writes in that window are dropped, as a
        # closing transport would, instead of raising websockets' InvalidState.
        if self.closing or self.ws.state is not State.OPEN:
            return
        self.ws.send_binary(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_now(self, data: bytes) -> None:
        # The data path frames itself (binary, FIN, masked from the client):
        # 3 us a frame against websockets' 5.5 us, measured (docs/benchmarks.md).
        # Control frames (close, pong) still come from websockets' protocol,
        # whose state decides whether data may go at all.
        if self.closing or self.ws.state is not State.OPEN:
            return
        if self.ws.writes:  # websockets' own frames (a pong) go first, in order
            self._flush()
        frame = binary_frame(data, self.masked)
        if len(data) < _JOIN_BELOW_BYTES:
            # One chunk, so one TLS record: each chunk of a writelines is a
            # record of its own (SSLObject.write), and a separate 2-byte
            # header record cost 1.8 us more per message (docs/benchmarks.md).
            self.tcp.write(b"".join(frame))
        else:
            self.tcp.writelines(frame)

    def _flush(self) -> None:
        self.flush_scheduled = False
        chunks = self.ws.data_to_send()
        if not chunks:
            return
        if chunks[-1] == b"":
            chunks.pop()
            if chunks:
                self.tcp.writelines(chunks)
            if self.tcp.can_write_eof() and not self.tcp.is_closing():
                self.tcp.write_eof()
        else:
            self.tcp.writelines(chunks)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
        self.tcp.close()

    def abort(self) -> None:
        self.closing = True
        self.tcp.abort()

    # -- wire -> upper -------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._rview = _READ_BUFFER.get()
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._rview
        assert view is not None
        self._rview = None
        shared = view is _READ_BUFFER.view
        if shared:
            _READ_BUFFER.busy = True
        try:
            self.data_received(view[:nbytes])
        finally:
            if shared:
                _READ_BUFFER.busy = False

    def data_received(self, data: bytes | memoryview) -> None:
        if not self.fast:
            self.ws.receive_data(bytes(data))
            self.deliver(self.ws.events_received())
            return
        # The data path parses frames itself (1 us a frame against
        # websockets' 9.6 us, measured); control frames and anything unusual
        # (reserved bits or opcodes, a wrong mask bit, an oversized frame)
        # go to websockets whole, whose parser therefore always stands at a
        # frame boundary and keeps the close handshake and its errors.
        # A data frame's payload is passed on as it arrives, without waiting
        # for the frame's end: frame boundaries mean nothing to SSH, and the
        # bytes are not copied into a buffer first (a 256 KiB frame comes in
        # 16 KiB TLS records; buffering it cost 1.4 ms per MiB, measured in
        # docs/benchmarks.md). Only a split header or control frame is kept.
        pos = 0
        size = len(data)
        rest = self.rest
        if rest:
            pos = min(rest, size)
            self.rest = rest - pos
            self._payload(data, 0, pos)
            if pos == size:
                return
        if self.rbuf:
            data = bytes(self.rbuf) + data[pos:]
            self.rbuf = bytearray()
            size = len(data)
            pos = 0
        expect = 0x80 if self.expect_masked else 0
        while size - pos >= 2 and not self.closing:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4
            if size - pos < head:
                break
            opcode = b0 & 0x0F
            unusual = (b0 & 0x70) or (b1 & 0x80) != expect or length > self.max_frame
            if unusual or opcode > 2:
                if unusual or length > 125 or opcode < 8:
                    self._slow(data[pos:])
                    return
                if size - pos < head + length:
                    break
                self.ws.receive_data(bytes(data[pos : pos + head + length]))
                pos += head + length
                self.deliver(self.ws.events_received())
                continue
            if expect:
                self.mask = bytes(data[pos + head - 4 : pos + head])
                self.mask_phase = 0
            pos += head
            n = min(length, size - pos)
            self.rest = length - n
            self._payload(data, pos, pos + n)
            pos += n
        if pos < size and not self.closing:
            self.rbuf = bytearray(data[pos:])  # at most a header or a control frame

    def _payload(self, data: bytes | memoryview, start: int, end: int) -> None:
        """Pass ``data[start:end]``, part of the current data frame, upward."""
        if start == end:
            return
        if self.expect_masked:
            # Where this piece starts inside the frame decides the mask's phase.
            phase = self.mask_phase
            mask = self.mask[phase:] + self.mask[:phase] if phase else self.mask
            self.mask_phase = (phase + end - start) & 3
            self.upper.data_received(apply_mask(data[start:end], mask))
        else:
            # A view of the read buffer: the SSH layer copies what it keeps
            # (its receive buffer), so the view may be handed up as bytes.
            piece = data if start == 0 and end == len(data) else data[start:end]
            self.upper.data_received(cast(bytes, piece))

    def _slow(self, rest: bytes | memoryview) -> None:
        """Hand the rest of the stream to websockets for good."""
        self.fast = False
        self.ws.receive_data(bytes(rest))
        self.deliver(self.ws.events_received())

    def deliver(self, events: list[Any]) -> None:
        ws = self.ws
        upper = self.upper
        for frame in events:
            if frame.opcode in _DATA_OPCODES:
                if frame.data:
                    upper.data_received(bytes(frame.data))
            elif frame.opcode is Opcode.CLOSE:
                self.close_reason = ws.close_reason or "peer closed the WebSocket"
        self._flush()
        if ws.state is State.CLOSED or ws.close_expected():
            if ws.parser_exc is not None:
                self.close_reason = f"invalid WebSocket data: {ws.parser_exc}"
            self.closing = True
            self.tcp.close()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if exc is None and self.close_reason:
            exc = ConnectionResetError(self.close_reason)
        self.upper.connection_lost(exc)

    def pause_writing(self) -> None:
        self.set_paused(output=True)
        self.upper.pause_writing()

    def resume_writing(self) -> None:
        self.set_paused(output=False)
        self.upper.resume_writing()


def attach_server(
    tcp: asyncio.Transport, ws: ServerProtocol, upper: asyncio.Protocol
) -> FramedTransport:
    """Switch an accepted, upgraded connection to framed streaming.

    ``ws`` must be the ServerProtocol that produced the 101 response; bytes
    it already buffered after the request head are delivered to ``upper``.
    Returns the transport given to ``upper.connection_made``.
    """
    link = _Link(tcp, ws, upper)
    tcp.set_protocol(link)
    upper.connection_made(link.transport)
    # Frames that arrived together with the request head, if any (a client
    # may not send any before our 101, so this is normally nothing).
    link.deliver(ws.events_received())
    # Our parser takes over where websockets' has nothing buffered.
    link.fast = not ws.reader.buffer and ws.state is State.OPEN
    return link.transport


def new_server_protocol(max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> ServerProtocol:
    """A ServerProtocol offering ``chisel-v3`` and bounded frames."""
    return ServerProtocol(subprotocols=[SUBPROTOCOL], max_size=max_frame_bytes)  # type: ignore[list-item]


def http_response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A complete, closing HTTP response for the front door."""
    import email.utils
    from http import HTTPStatus

    h = Headers()
    h["Date"] = email.utils.formatdate(usegmt=True)
    h["Server"] = "qanat"
    h["Content-Type"] = content_type
    h["Content-Length"] = str(len(body))
    h["Connection"] = "close"
    for name, value in (headers or {}).items():
        h[name] = value
    return Response(status, HTTPStatus(status).phrase, h, body)


def _retry_after(value: str) -> float | None:
    """Retry-After in seconds (only the delay-seconds form), capped at an hour."""
    value = value.strip()
    return min(float(value), 3600.0) if value.isdigit() else None


class _ClientHandshake(asyncio.Protocol):
    """Lower protocol while the connector waits for the 101 answer."""

    def __init__(self, ws: ClientProtocol) -> None:
        self.ws = ws
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tcp: asyncio.Transport | None = None
        self.received = 0
        self.events: list[Any] = []
        # A 101 head is given to websockets alone; what follows it (frames)
        # is kept for the link's own parser.
        self.head = bytearray()
        self.head_only = False
        self.leftover = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.head_only:
            self.leftover += data
            return
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0 and len(self.head) <= MAX_RESPONSE_BYTES:
                return
            if end >= 0 and self.head.startswith(b"HTTP/1.1 101 "):
                self.head_only = True
                self.leftover += self.head[end + 4 :]
                data = bytes(self.head[: end + 4])
            else:
                data = bytes(self.head)
            self.head = None  # type: ignore[assignment]
        self.ws.receive_data(data)
        self.events.extend(self.ws.events_received())
        if self.ws.handshake_exc is not None or self.events:
            if not self.done.done():
                self.done.set_result(None)
        elif self.received > MAX_RESPONSE_BYTES and not self.done.done():
            self.done.set_exception(HandshakeError("gateway sent an oversized HTTP response head"))

    def eof_received(self) -> bool:
        if self.head:  # an incomplete head: websockets explains what is wrong
            self.ws.receive_data(bytes(self.head))
            self.head = None  # type: ignore[assignment]
        self.ws.receive_eof()
        if not self.done.done():
            if self.ws.handshake_exc is not None or self.ws.state is State.OPEN:
                self.done.set_result(None)
            elif self.received == 0:
                self.done.set_exception(
                    HandshakeError(
                        "gateway closed the connection without answering the WebSocket upgrade",
                        no_answer=True,
                    )
                )
            else:
                self.done.set_exception(
                    HandshakeError("connection closed before the HTTP response was complete")
                )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            error = HandshakeError(
                f"connection lost during the WebSocket upgrade: {exc or 'EOF'}",
                no_answer=self.received == 0,
            )
            # The cause lets the caller explain a TLS alert (client certificate).
            error.__cause__ = exc
            self.done.set_exception(error)


async def client_handshake(
    tcp: asyncio.Transport,
    url: str,
    headers: Mapping[str, str] | list[tuple[str, str]],
    upper: asyncio.Protocol,
    *,
    timeout_s: float,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> tuple[FramedTransport, Response]:
    """Upgrade an open connection to a chisel-v3 WebSocket.

    ``url`` is the tunnel URL (``ws://`` or ``wss://``, path and query);
    ``headers`` are added to the request (User-Agent, token, ``--header``).
    The server may or may not echo ``Sec-WebSocket-Protocol``; both are fine.

    Raises:
        AuthError: the gateway answered 401 or 403.
        HandshakeError: any other refusal, a malformed answer or a timeout.
    """
    ws = ClientProtocol(
        parse_uri(url),
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        max_size=max_frame_bytes,
    )
    request = ws.connect()
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name.lower() in request.headers:
            del request.headers[name]
        request.headers[name] = value
    hs = _ClientHandshake(ws)
    tcp.set_protocol(hs)
    hs.connection_made(tcp)
    ws.send_request(request)
    for chunk in ws.data_to_send():
        if chunk:
            tcp.write(chunk)
    try:
        async with asyncio.timeout(timeout_s):
            await hs.done
    except TimeoutError:
        raise HandshakeError(f"no answer to the WebSocket upgrade within {timeout_s:g}s") from None
    exc = ws.handshake_exc
    if exc is not None:
        if isinstance(exc, InvalidStatus):
            response = exc.response
            body = bytes(response.body or b"")[:512].decode("utf-8", "replace").strip()
            status = response.status_code
            cls = AuthError if status in (401, 403) else HandshakeError
            raise cls(
                f"gateway refused the tunnel: HTTP {status} {response.reason_phrase}"
                + (f": {body}" if body else ""),
                status=status,
                body=body,
                retry_after_s=_retry_after(response.headers.get("Retry-After", "")),
            )
        raise HandshakeError(f"WebSocket upgrade failed: {exc}") from exc
    if ws.state is not State.OPEN:
        raise HandshakeError("WebSocket upgrade failed: no 101 Switching Protocols")
    response = hs.events[0]
    assert isinstance(response, Response)
    link = _Link(tcp, ws, upper)
    tcp.set_protocol(link)
    upper.connection_made(link.transport)
    # Frames that came in the same read as the 101 (the server speaks first).
    link.deliver(hs.events[1:])
    if hs.head_only and ws.state is State.OPEN:
        # websockets saw exactly the response head: our parser goes on from
        # the bytes after it.
        link.fast = True
        leftover, hs.leftover = bytes(hs.leftover), bytearray()
        if leftover:
            link.data_received(leftover)
    return link.transport, response


def response_bytes(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A complete, closing HTTP response as bytes."""
    return http_response(status, body, content_type, headers).serialize()


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """The parts of an upgrade request the front door decides on (no library types)."""

    path: str
    headers: tuple[tuple[str, str], ...]

    def get_all(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for k, v in self.headers if k.lower() == lower]

    def get(self, name: str, default: str = "") -> str:
        values = self.get_all(name)
        return values[0] if values else default


class ServerUpgrade:
    """One WebSocket upgrade on the gateway: parse the head, then accept or refuse.

    Raises:
        HandshakeError: (from the constructor) the head is not a valid request.
    """

    def __init__(self, head: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._ws = new_server_protocol(max_frame_bytes)
        self._ws.receive_data(head)
        events = self._ws.events_received()
        if self._ws.handshake_exc is not None or not events or not isinstance(events[0], Request):
            raise HandshakeError(
                f"malformed request head ({self._ws.handshake_exc or 'incomplete'})"
            )
        self._request: Request = events[0]
        self.request = UpgradeRequest(
            path=self._request.path, headers=tuple(self._request.headers.raw_items())
        )

    def accept(self, extra_headers: Mapping[str, str]) -> tuple[bool, bytes]:
        """(True, the 101 answer) or (False, websockets' refusal, e.g. a bad key)."""
        response = self._ws.accept(self._request)
        if response.status_code == 101:
            for name, value in extra_headers.items():
                response.headers[name] = value
        self._ws.send_response(response)
        return response.status_code == 101, b"".join(self._ws.data_to_send())

    def attach(self, tcp: asyncio.Transport, upper: asyncio.Protocol) -> FramedTransport:
        """After an accepted 101: stream frames to ``upper`` (see :func:`attach_server`)."""
        return attach_server(tcp, self._ws, upper)
