"""The node link: carries one app connection to the node holding its connector.

Serving side, :class:`LinkServer`: a TCP listener on its own address
(``--node-link``, never the front door's nor an endpoint's). Each accepted
connection sends one request line (:mod:`qanat.cluster.linkwire`), bounded
in size and time; a valid one is handed to ``relay`` (the gateway's endpoint
opens a channel on one of *its own* connectors and answers ``OK``, or ``NO``
with the reasons), anything else is answered ``NO`` and closed.

Client side, :class:`RemoteTunnel`: how a remote node appears in a port's
pool. Its :meth:`LinkDialer.open_channel` has the shape of
:meth:`qanat.net.ssh.SshTunnel.open_channel`, so the endpoint's retry loop
treats "another node" like "another connector": the link connection is
dialled, the request sent, and on ``OK`` the connection itself becomes the
channel the app connection is spliced to (:class:`LinkChannel`); on ``NO``,
a refused dial or no answer within the open timeout the next member is
tried.

Buffers: each link connection is one TCP connection with asyncio's own write
buffer limits; a full buffer pauses the other side's reads (the splice's
back-pressure), so a slow app or endpoint costs at most a socket buffer and a
transport buffer per hop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from qanat.cluster import linkwire
from qanat.errors import ChannelOpenFailed
from qanat.runtime import TaskOwner

log = logging.getLogger("qanat.cluster.link")

#: Bound on reading the request line on the serving side.
HANDSHAKE_TIMEOUT_S = 5.0

Relay = Callable[[linkwire.LinkRequest, asyncio.Transport, bytes], None]


def _now_ms() -> int:
    return int(time.time() * 1000)


class LinkServer:
    """Accepts link connections from the other nodes (see the module docstring)."""

    def __init__(self, secret: bytes, relay: Relay) -> None:
        self.secret = secret
        self.relay = relay
        self.nonces = linkwire.NonceCache()
        self.server: asyncio.Server | None = None
        self.refused = 0

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Start listening; returns the bound address."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _ServingHandshake(self), host, port, reuse_address=True, backlog=1024
        )
        name = self.server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def answer(self, transport: asyncio.Transport, nonce: str, reason: str | None) -> None:
        """Send the ``OK`` / ``NO`` line for ``nonce`` (``NO`` closes after it)."""
        if transport.is_closing():
            return
        transport.write(linkwire.reply_line(self.secret, nonce, reason))
        if reason is not None:
            transport.close()


class _ServingHandshake(asyncio.Protocol):
    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._timeout)

    def _timeout(self) -> None:
        if self.transport is not None:
            self._refuse(f"no node link request within {HANDSHAKE_TIMEOUT_S:g}s")

    def _refuse(self, why: str) -> None:
        assert self.transport is not None
        self.server.refused += 1
        peer = self.transport.get_extra_info("peername")
        log.warning("node link from %s refused: %s", peer, why)
        self.transport.abort()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.buffer += data
        line, sep, rest = self.buffer.partition(b"\n")
        if not sep:
            if len(self.buffer) > linkwire.MAX_LINE:
                self._refuse(f"request line longer than {linkwire.MAX_LINE} bytes")
            return
        if self.timer is not None:
            self.timer.cancel()
        try:
            request = linkwire.parse_request(
                line, self.server.secret, _now_ms(), self.server.nonces
            )
        except linkwire.LinkRefused as exc:
            self._refuse(str(exc))
            return
        transport, self.transport = self.transport, None
        transport.pause_reading()
        self.server.relay(request, transport, rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


_remote_ids = itertools.count(-1, -1)


class RemoteTunnel:
    """A remote node in a port's pool (duck-types the parts of a Tunnel the endpoint uses).

    Attributes:
        node: the remote node's name; ``link``: its link address.
        draining: the node said it is draining (tried last).
    """

    remote = True
    missed_pings = 0

    def __init__(self, node: str, link: tuple[str, int], dialer: LinkDialer) -> None:
        self.id = next(_remote_ids)
        # A UDP endpoint's link connection to this node opens in a task of its own.
        self.tasks = TaskOwner(f"node {node} link")
        self.node = node
        self.link = link
        self.draining = False
        self.identity = f"node {node}"
        self.ssh = dialer
        self.channels_failed = 0
        self.channels_total = 0
        self.open = 0
        self.closed = False

    @property
    def serving(self) -> bool:
        return not self.closed

    def track(self, splice: Any) -> None:
        self.channels_total += 1
        self.open += 1

    def untrack(self, splice: Any) -> None:
        self.open -= 1


class LinkDialer:
    """Opens link connections to one remote node for one (stage, port)."""

    def __init__(
        self,
        secret: bytes,
        node: str,
        link: tuple[str, int],
        stage: str,
        port: int,
        kind: str = "tcp",
    ) -> None:
        self.secret = secret
        self.kind = kind
        self.node = node  # this node's name (the request's "from")
        self.link = link
        self.stage = stage
        self.port = port

    async def open_channel(
        self, extra: bytes, session_factory: Callable[[], Any], *, timeout_s: float | None = None
    ) -> Any:
        """Dial the node, ask for a channel; on OK the connection is the channel.

        Raises:
            ChannelOpenFailed: the node is unreachable or none of its connectors
                could open the channel (``reason`` says which).
            TimeoutError: no answer within ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        nonce = linkwire.new_nonce()
        answered: asyncio.Future[bytes] = loop.create_future()
        protocol = _ClientLink(answered)
        host, port = self.link
        where = f"node link {host}:{port}"
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    transport, _ = await loop.create_connection(lambda: protocol, host, port)
                except OSError as exc:
                    reason = f"{where}: {exc.strerror or exc}"
                    raise ChannelOpenFailed(reason, reason=reason) from None
                transport.write(
                    linkwire.request_line(
                        self.secret,
                        node=self.node,
                        stage=self.stage,
                        port=self.port,
                        now_ms=_now_ms(),
                        nonce=nonce,
                        kind=self.kind,
                    )
                )
                try:
                    line = await answered
                except ConnectionError as exc:
                    reason = f"{where}: {exc}"
                    raise ChannelOpenFailed(reason, reason=reason) from None
        except BaseException:
            protocol.abort()
            raise
        try:
            refusal = linkwire.parse_reply(line, self.secret, nonce)
        except linkwire.LinkRefused as exc:
            protocol.abort()
            raise ChannelOpenFailed(f"{where}: {exc}", reason=f"{where}: {exc}") from None
        if refusal is not None:
            protocol.abort()
            raise ChannelOpenFailed(refusal, reason=f"{where}: {refusal}")
        return protocol.start(session_factory())


class LinkChannel:
    """The link connection seen as a channel (the Splice's ByteChannel)."""

    __slots__ = ("transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()

    def close(self) -> None:
        self.transport.close()

    def pause_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()


class _ClientLink(asyncio.Protocol):
    """Reads the answer line, then feeds the session (a splice's channel end)."""

    def __init__(self, answered: asyncio.Future[bytes]) -> None:
        self.answered = answered
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.session: Any = None
        self.held: list[bytes] = []
        self.eof = False
        self.lost: Exception | None = None
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def start(self, session: Any) -> Any:
        assert self.transport is not None
        self.session = session
        session.connection_made(LinkChannel(self.transport))
        session.session_started()
        held, self.held = self.held, []
        for chunk in held:
            session.data_received(chunk)
        if self.eof:
            session.eof_received()
        if self.gone:
            session.connection_lost(self.lost)
        return session

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)
            return
        if self.answered.done():
            self.held.append(data)
            return
        self.buffer += data
        line, sep, rest = self.buffer.partition(b"\n")
        if sep:
            self.buffer = b""
            if rest:
                self.held.append(rest)
            self.answered.set_result(line)
        elif len(self.buffer) > linkwire.MAX_LINE:
            self.answered.set_exception(ConnectionError("answer line too long"))
            self.abort()

    def eof_received(self) -> bool:
        if self.session is not None:
            return bool(self.session.eof_received())
        if not self.answered.done():
            self.answered.set_exception(ConnectionError("closed before answering"))
            return False
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost(exc)
            return
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(str(exc) if exc else "connection closed"))
        self.gone = True
        self.lost = exc

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_writing()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_writing()
