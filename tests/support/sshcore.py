"""A test driver for the sans-IO SSH core over a real asyncio socket.

Records every event the core reports, so interop tests can wait for them.
With ``tcpip_forward=True`` a server answers ``tcpip-forward`` (RFC 4254
§7.1) with success, and the port it "bound" when port 0 was asked: nothing
listens, the test opens ``forwarded-tcpip`` channels itself (``forwards``
lists what was asked for, as the peer will match it).
It is deliberately not the product adapter (``qanat.net.ssh``): these tests
pin the core's behaviour against other implementations on their own.
"""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict
from typing import Any

from qanat.wire.ssh import BaseHandler, SshConnection, SshRemoteError
from qanat.wire.ssh.codec import Reader

#: The first port handed out for a ``tcpip-forward`` of port 0 (a label only).
FIRST_ALLOCATED_PORT = 50000


class CoreProtocol(asyncio.Protocol, BaseHandler):
    def __init__(
        self,
        *,
        accept_opens: bool = True,
        echo: bool = False,
        tcpip_forward: bool = False,
        **kwargs: Any,
    ) -> None:
        self.conn = SshConnection(handler=self, **kwargs)
        self.conn.on_output = self._schedule
        self.conn.on_lazy_output = self._schedule  # this driver sends everything at once
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.error: Exception | None = None
        self.accept_opens = accept_opens
        self.echo = echo
        self.opened: list[tuple[int, bytes, bytes]] = []
        self.results: dict[int, asyncio.Future[tuple[bool, int, str]]] = {}
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.eofs: set[int] = set()
        self.closed: set[int] = set()
        self.requests: list[tuple[str, bytes, bool]] = []
        self.replies: list[asyncio.Future[tuple[bool, bytes]]] = []
        self.tcpip_forward = tcpip_forward
        #: (bind address, port) of each accepted ``tcpip-forward``, the port
        #: being the allocated one when the peer asked for 0.
        self.forwards: list[tuple[str, int]] = []
        self._next_port = FIRST_ALLOCATED_PORT
        self._scheduled = False

    # -- asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flush()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
        except SshRemoteError as exc:
            self.error = exc
            self._flush()
            if self.transport is not None:
                self.transport.close()
            if not self.ready.done():
                self.ready.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(self.error or ConnectionError(f"lost: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)
        for fut in self.replies:
            if not fut.done():
                fut.set_exception(ConnectionError("lost"))
        for fut in self.results.values():
            if not fut.done():
                fut.set_exception(ConnectionError("lost"))

    # -- handler side
    def ssh_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def ssh_global_request(self, name: str, payload: bytes, want_reply: bool) -> None:
        self.requests.append((name, payload, want_reply))
        if self.tcpip_forward and name in ("tcpip-forward", "cancel-tcpip-forward"):
            ok, reply = self._forward_request(name, payload)
            if want_reply:
                self.conn.reply_global(ok, reply)
            return
        if want_reply:
            if name == "ping":
                self.conn.reply_global(True, b"pong")
            else:
                self.conn.reply_global(False, b"no " + name.encode())

    def _forward_request(self, name: str, payload: bytes) -> tuple[bool, bytes]:
        try:
            r = Reader(payload)
            address = r.text(256)
            port = r.u32()
        except SshRemoteError:
            return False, b""
        if name == "cancel-tcpip-forward":
            if (address, port) not in self.forwards:
                return False, b""
            self.forwards.remove((address, port))
            return True, b""
        if port > 65535:
            return False, b""
        if port != 0:
            self.forwards.append((address, port))
            return True, b""
        port = self._next_port  # RFC 4254 §7.1: the reply carries the port bound
        self._next_port += 1
        self.forwards.append((address, port))
        return True, struct.pack(">I", port)

    def ssh_global_reply(self, ok: bool, payload: bytes) -> None:
        fut = self.replies.pop(0)
        fut.set_result((ok, payload))

    def ssh_channel_open(self, chan_id: int, kind: bytes, extra: bytes) -> None:
        self.opened.append((chan_id, kind, extra))
        if self.accept_opens:
            self.conn.accept_channel(chan_id, 1 << 20, 32768)
        else:
            self.conn.reject_channel(chan_id, 2, "refused by test")

    def ssh_channel_open_result(self, chan_id: int, ok: bool, code: int, text: str) -> None:
        self.results[chan_id].set_result((ok, code, text))

    def ssh_channel_data(self, chan_id: int, data: bytes) -> None:
        self.data[chan_id] += data
        if self.echo:
            self.conn.send_data(chan_id, data)

    def ssh_channel_eof(self, chan_id: int) -> None:
        self.eofs.add(chan_id)
        if self.echo:  # both directions done: close, as sshd does
            self.conn.send_eof(chan_id)
            self.conn.close_channel(chan_id)

    def ssh_channel_closed(self, chan_id: int) -> None:
        self.closed.add(chan_id)
        self.conn.close_channel(chan_id)

    # -- test helpers
    async def request(self, name: str, payload: bytes = b"") -> tuple[bool, bytes]:
        fut = self.loop.create_future()
        self.replies.append(fut)
        self.conn.global_request(name, payload, True)
        return await fut  # type: ignore[no-any-return]

    async def open(
        self, kind: bytes, extra: bytes, window: int = 1 << 20, max_packet: int = 32768
    ) -> int:
        chan_id = self.conn.open_channel(kind, extra, window, max_packet)
        fut = self.results[chan_id] = self.loop.create_future()
        ok, code, text = await fut
        if not ok:
            raise ConnectionRefusedError(f"open refused ({code}): {text}")
        return chan_id


def direct_tcpip(host: str, port: int) -> bytes:
    h = host.encode()
    return (
        struct.pack(">I", len(h)) + h + struct.pack(">I", port)
        + struct.pack(">I", 9) + b"127.0.0.1" + struct.pack(">I", 1)
    )  # fmt: skip


def forwarded_tcpip(
    address: str, port: int, originator: str = "127.0.0.1", originator_port: int = 1
) -> bytes:
    """The extra data of a ``forwarded-tcpip`` open (RFC 4254 §7.2)."""
    a, o = address.encode(), originator.encode()
    return (
        struct.pack(">I", len(a)) + a + struct.pack(">I", port)
        + struct.pack(">I", len(o)) + o + struct.pack(">I", originator_port)
    )  # fmt: skip
