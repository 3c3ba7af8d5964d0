"""UDP endpoints: ``secure-gateway:<port>`` for remotes like ``R:8053:10.0.0.2:53/udp``.

An :class:`UdpPort` is one UDP socket on the stage's bind address plus
the tunnels that declared the port (a pool, as for TCP). UDP has no
connections, so the unit of state is the *flow*: every app source address
(``127.0.0.1:40001``) that sends a datagram. A flow sticks to one tunnel,
chosen round robin when the flow starts::

    app 127.0.0.1:40001 --UDP--> endpoint --gob udpPacket{Src, Payload}-->
        the tunnel's UDP channel for this port --> connector --UDP--> target
    app <--UDP-- endpoint <--udpPacket{Src of the flow, answer}-- connector

Per tunnel and port there is at most one ``chisel`` channel, with extra data
``host:port/udp``, opened with the first datagram and kept while the tunnel
lives, exactly as chisel's listener does; it carries the gob stream of
:mod:`qanat.wire.gob`, so a stock chisel client serves it too. Answers are
delivered only to flows that exist and belong to the tunnel that answers: a
connector cannot make the gateway send datagrams anywhere else.

Limits (:class:`~qanat.gateway.settings.GatewaySettings`): at most
``udp_max_flows`` flows per endpoint (a datagram from one more source is
dropped and logged), flows idle for ``udp_idle_timeout_s`` are forgotten,
datagrams over ``udp_max_payload_bytes`` (chisel's 9012) are dropped and
logged, a channel that is still opening holds at most ``udp_max_pending``
datagrams, and a full channel window drops datagrams rather than queueing.
A tunnel whose connector refused the channel is not asked again for
``udp_reopen_delay_s``. Nothing here raises into the event loop.

Across gateway nodes (:mod:`qanat.cluster`): another node holding
connectors for the port is a pool member like a tunnel (a
``RemoteTunnel``); its "channel" is one node link connection of kind
``udp`` carrying the same gob stream for all this node's flows to it. On
the serving node that connection is a :class:`RelayedFlows`: its packets
become flows of the local endpoint (keyed by the link and the app's
``Src``, so flows of different nodes and apps stay apart), subject to the
same limits and idle expiry, and tried only on that node's *own* tunnels,
so nothing loops. Answers go back over the link; a link whose socket is
full drops them (counted), it never queues.

UDP endpoints are bound, joined and closed by the same
:class:`~qanat.gateway.ports.PortTable` path as TCP ones (so two connectors
declaring one UDP port at once join one socket), and a new flow picks its
tunnel from the same :class:`~qanat.gateway.balancer.Pool`: draining
tunnels last, unhealthy ones after healthy ones, channel opens counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from qanat.errors import ChannelOpenFailed, GobError, LocalProtocolError
from qanat.gateway.balancer import Member
from qanat.gateway.context import GatewayContext
from qanat.gateway.ports import GatewayPort
from qanat.gateway.status import PortStatus, Proto, UdpStatus
from qanat.telemetry.throttle import Throttle, held_back
from qanat.wire.gob import GobDecoder, GobEncoder, UdpPacket
from qanat.wire.remotes import Remote

if TYPE_CHECKING:
    from qanat.gateway.stages import StageConfig
    from qanat.gateway.tunnel import Tunnel


def format_src(addr: Any) -> str:
    """An app's address as Go's ``UDPAddr.String()`` writes it (the gob ``Src``)."""
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Flow:
    __slots__ = ("addr", "last_active", "member", "sink", "src", "tunnel")

    def __init__(self, src: str, addr: Any, member: Member, sink: RelayedFlows | None) -> None:
        self.src = src
        # The app's address (local flow), or its Src on the node that relays it.
        self.addr = addr
        self.sink = sink
        self.member = member
        self.tunnel = cast("Tunnel", member.tunnel)
        self.last_active = time.monotonic()


class UdpChannel:
    """One tunnel's ``chisel`` channel for one UDP endpoint (asyncssh session)."""

    def __init__(self, endpoint: UdpPort, member: Member) -> None:
        self.endpoint = endpoint
        self.member = member
        self.tunnel = cast("Tunnel", member.tunnel)
        self.opened = False
        self.chan: Any = None
        self.ready = False
        self.closed = False
        self.paused = False
        self.pending: list[UdpPacket] = []
        settings = endpoint.ctx.settings
        self._encoder = GobEncoder(max_payload_bytes=settings.udp_max_payload_bytes)
        self._decoder = GobDecoder(max_payload_bytes=settings.udp_max_payload_bytes)

    async def open(self) -> None:
        """Open the channel; on refusal tell the endpoint (never raises)."""
        ep = self.endpoint
        pool = ep.pool
        timeout_s = ep.ctx.settings.channel_open_timeout_s
        token = pool.begin(self.member, time.monotonic())
        try:
            await self.tunnel.ssh.open_channel(ep.extra, lambda: self, timeout_s=timeout_s)
        except ChannelOpenFailed as exc:
            reason = exc.reason or str(exc)
            pool.failed(self.member, token, time.monotonic(), reason)
            ep.channel_failed(self, reason)
            return
        except TimeoutError:
            reason = f"no answer within {timeout_s:g}s"
            pool.failed(self.member, token, time.monotonic(), reason)
            ep.channel_failed(self, reason)
            return
        except BaseException:
            pool.abandoned(self.member, token)
            raise
        pool.succeeded(self.member, token, time.monotonic())
        self.opened = True
        self.tunnel.channels_total += 1
        if self.closed:  # unbound while opening
            self.chan.close()
            return
        self.ready = True
        pending, self.pending = self.pending, []
        for packet in pending:
            self.send(packet)

    def send(self, packet: UdpPacket) -> bool:
        """Queue or write one datagram; False when it was dropped."""
        if self.closed:
            return False
        if not self.ready:
            if len(self.pending) >= self.endpoint.ctx.settings.udp_max_pending:
                return False
            self.pending.append(packet)
            return True
        if self.paused:
            return False
        try:
            self.chan.write(self._encoder.encode(packet))
        except LocalProtocolError:
            return False
        except Exception as exc:  # the channel is going away; never crash the loop
            self.endpoint.log.debug("UDP channel write failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self.pending.clear()
        if self.chan is not None:
            try:
                self.chan.close()
            except Exception as exc:
                self.endpoint.log.debug("closing a UDP channel: %s", exc)

    # -- asyncssh session interface ----------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def session_started(self) -> None:
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        try:
            packets = self._decoder.feed(data)
        except GobError as exc:
            self.endpoint.log.warning(
                "tunnel %d broke the UDP channel's gob stream (%s); closing the channel",
                self.tunnel.id,
                exc,
            )
            self.close()
            return
        for packet in packets:
            self.endpoint.reply(self, packet)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.opened:
            self.opened = False
            self.member.open -= 1
        self.endpoint.channel_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


class RelayedFlows(asyncio.Protocol):
    """Serving side of a ``udp`` node link connection: another node's flows.

    Reads the gob stream of ``udpPacket{Src, Payload}`` the other node's
    :class:`UdpChannel` writes and hands each packet to the endpoint; writes
    answers back the same way, dropping them while the socket is full.
    """

    def __init__(self, endpoint: UdpPort, name: str) -> None:
        self.endpoint = endpoint
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.paused = False
        settings = endpoint.ctx.settings
        self._encoder = GobEncoder(max_payload_bytes=settings.udp_max_payload_bytes)
        self._decoder = GobDecoder(max_payload_bytes=settings.udp_max_payload_bytes)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.endpoint.links.add(self)
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        try:
            packets = self._decoder.feed(data)
        except GobError as exc:
            self.endpoint.log.warning(
                "%s broke the UDP link's gob stream (%s); closing it", self.name, exc
            )
            self.close()
            return
        for packet in packets:
            self.endpoint.relayed_datagram(self, packet)

    def answer(self, src: str, payload: bytes) -> bool:
        """Send one answer back; False when it was dropped."""
        if self.transport is None or self.transport.is_closing() or self.paused:
            return False
        try:
            self.transport.write(self._encoder.encode(UdpPacket(src, payload)))
        except LocalProtocolError:
            return False
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.endpoint.link_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


class UdpPort(GatewayPort, asyncio.DatagramProtocol):
    """One UDP ``secure-gateway:<port>`` of one stage."""

    proto: Proto = "udp"

    def __init__(self, ctx: GatewayContext, stage: StageConfig, remote: Remote) -> None:
        super().__init__(ctx, stage, remote)
        self.flows: dict[str, _Flow] = {}
        self.channels: dict[int, UdpChannel] = {}
        self.refused_until: dict[int, float] = {}
        self.links: set[RelayedFlows] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0
        self.refused_flows = 0
        self.oversized = 0
        self.unknown_answers = 0
        self.no_tunnel = 0
        # Dropped datagrams: counted always, logged at most 10 per 10 s per reason.
        self._drops = Throttle(burst=10, window_s=10.0)

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.bind_host, self.port))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for channel in list(self.channels.values()):
            channel.close()
        self.channels.clear()
        for link in list(self.links):
            link.close()
        self.links.clear()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- DatagramProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for datagrams we sent to apps (port unreachable): harmless.
        self.log.debug("UDP socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        src = format_src(addr)
        flow = self.flows.get(src)
        if flow is None and not self.allows(str(addr[0])):
            self.refused(str(addr[0]))
            return
        settings = self.ctx.settings
        if len(data) > settings.udp_max_payload_bytes:
            self.oversized += 1
            self.dropped += 1
            held = self._drops.allow("oversized")
            if held is not None:
                self.log.warning(
                    "dropped a datagram of %d bytes from %s: over the %d-byte UDP limit "
                    "(chisel's); %d dropped so far%s",
                    len(data),
                    src,
                    settings.udp_max_payload_bytes,
                    self.oversized,
                    held_back(held),
                )
            return
        if flow is None:
            flow = self._new_flow(src, addr)
            if flow is None:
                return
        self._forward(flow, data)

    def relayed_datagram(self, link: RelayedFlows, packet: UdpPacket) -> None:
        """A datagram another node relays (its own allowlist admitted the app)."""
        src = f"{link.name}|{packet.src}"
        flow = self.flows.get(src)
        if flow is None:
            flow = self._new_flow(src, packet.src, sink=link)
            if flow is None:
                return
        self._forward(flow, packet.payload)

    def _forward(self, flow: _Flow, data: bytes) -> None:
        flow.last_active = time.monotonic()
        channel = self._channel_for(flow.member)
        if channel is not None and channel.send(UdpPacket(flow.src, data)):
            self.packets_in += 1
        else:
            self.dropped += 1

    def link_lost(self, link: RelayedFlows) -> None:
        self.links.discard(link)
        for src in [s for s, f in self.flows.items() if f.sink is link]:
            del self.flows[src]

    def _new_flow(self, src: str, addr: Any, sink: RelayedFlows | None = None) -> _Flow | None:
        settings = self.ctx.settings
        if len(self.flows) >= settings.udp_max_flows:
            self.refused_flows += 1
            self.dropped += 1
            held = self._drops.allow("flows")
            if held is not None:
                self.log.warning(
                    "dropped a datagram from %s: already %d UDP flows (the limit); idle "
                    "flows expire after %gs (%d dropped so far)%s",
                    src,
                    len(self.flows),
                    settings.udp_idle_timeout_s,
                    self.refused_flows,
                    held_back(held),
                )
            return None
        member = self._pick(local_only=sink is not None)
        if member is None:
            self.dropped += 1
            self.no_tunnel += 1
            held = self._drops.allow("no tunnel")
            if held is not None:
                self.log.warning(
                    "dropped a datagram from %s: no connector%s can take it (%d dropped so far)%s",
                    addr,
                    " of this node" if sink is not None else "",
                    self.no_tunnel,
                    held_back(held),
                )
            return None
        flow = _Flow(src, addr, member, sink)
        self.flows[src] = flow
        if self._timer is None:
            self._arm_sweep()
        return flow

    def _pick(self, *, local_only: bool = False) -> Member | None:
        """The pool's order (balance, health, draining last, this node's
        tunnels first), skipping tunnels that just refused the channel, and
        other nodes for a flow another node relays."""
        now = time.monotonic()
        for member in self.pool.order(now):
            tunnel = cast("Tunnel", member.tunnel)
            if local_only and getattr(tunnel, "remote", False):
                continue
            if tunnel.serving and self.refused_until.get(tunnel.id, 0.0) <= now:
                return member
        return None

    def _channel_for(self, member: Member) -> UdpChannel | None:
        tunnel = cast("Tunnel", member.tunnel)
        channel = self.channels.get(tunnel.id)
        if channel is not None:
            return channel
        channel = UdpChannel(self, member)
        try:
            tunnel.tasks.spawn(channel.open(), name=f"udp-open-{self.port}-{tunnel.id}")
        except RuntimeError:  # the tunnel is closing
            return None
        self.channels[tunnel.id] = channel
        return channel

    # -- answers and channel events (called by UdpChannel) --------------------------------

    def reply(self, channel: UdpChannel, packet: UdpPacket) -> None:
        flow = self.flows.get(packet.src)
        if flow is None or flow.tunnel is not channel.tunnel or self.transport is None:
            # Expired flow, or a Src this tunnel was never given.
            self.unknown_answers += 1
            self.log.debug("dropped an answer for unknown flow %r", packet.src[:100])
            return
        flow.last_active = time.monotonic()
        if flow.sink is not None:
            if not flow.sink.answer(flow.addr, packet.payload):
                self.dropped += 1
                return
        else:
            self.transport.sendto(packet.payload, flow.addr)
        self.packets_out += 1

    def channel_failed(self, channel: UdpChannel, reason: str) -> None:
        tunnel = channel.tunnel
        delay = self.ctx.settings.udp_reopen_delay_s
        self.log.warning(
            "tunnel %d refused the UDP channel to %s: %s (not asked again for %gs)",
            tunnel.id,
            self.target,
            reason,
            delay,
        )
        self.refused_until[tunnel.id] = time.monotonic() + delay
        channel.closed = True
        self.dropped += len(channel.pending)  # held while it was opening: lost
        channel.pending.clear()
        self._forget(channel)

    def channel_lost(self, channel: UdpChannel) -> None:
        self._forget(channel)

    def _forget(self, channel: UdpChannel) -> None:
        tunnel = channel.tunnel
        if self.channels.get(tunnel.id) is channel:
            del self.channels[tunnel.id]
        # Its flows start over (on another tunnel if there is one).
        for src in [s for s, f in self.flows.items() if f.tunnel is tunnel]:
            del self.flows[src]

    def remove_tunnel(self, tunnel: Tunnel) -> None:
        self.pool.remove(tunnel)
        self.refused_until.pop(tunnel.id, None)
        channel = self.channels.pop(tunnel.id, None)
        if channel is not None:
            channel.close()
        for src in [s for s, f in self.flows.items() if f.tunnel is tunnel]:
            del self.flows[src]

    # -- expiry -------------------------------------------------------------------------

    def _arm_sweep(self) -> None:
        interval = max(0.05, self.ctx.settings.udp_idle_timeout_s / 4)
        self._timer = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        deadline = time.monotonic() - self.ctx.settings.udp_idle_timeout_s
        for src in [s for s, f in self.flows.items() if f.last_active <= deadline]:
            del self.flows[src]
            self.log.debug("UDP flow %s expired", src)
        if self.flows and self.transport is not None:
            self._arm_sweep()

    def snapshot(self) -> PortStatus:
        return self._status(
            udp=UdpStatus(
                flows=len(self.flows),
                packets_in=self.packets_in,
                packets_out=self.packets_out,
                dropped=self.dropped,
            )
        )
