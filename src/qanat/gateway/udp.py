"""UDP endpoints: ``secure-gateway:<port>`` for remotes like ``R:8053:10.0.0.2:53/udp``.

An :class:`UdpEndpoint` is one UDP socket on the stage's bind address plus
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

The TCP port table (:mod:`qanat.gateway.ports`) owns a :class:`UdpPortTable`
and forwards ``unbind``/``close_all`` to it; :func:`bind_remotes` binds a
tunnel's TCP and UDP remotes all or nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

from qanat.errors import ChannelOpenFailed, GobError, LocalProtocolError
from qanat.gateway.contested import contested_port
from qanat.logs import ContextLogger
from qanat.wire.gob import GobDecoder, GobEncoder, UdpPacket
from qanat.wire.remotes import Remote

if TYPE_CHECKING:
    from qanat.gateway.ports import PortTable
    from qanat.gateway.server import Gateway
    from qanat.gateway.stages import StageConfig
    from qanat.gateway.tunnel import Tunnel

_log = logging.getLogger("qanat.gateway.udp")


def should_log(count: int) -> bool:
    """Log the first ten of a repeated event, then every thousandth."""
    return count <= 10 or count % 1000 == 0


def format_src(addr: Any) -> str:
    """An app's address as Go's ``UDPAddr.String()`` writes it (the gob ``Src``)."""
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def bind_remotes(ports: PortTable, tunnel: Tunnel, remotes: tuple[Remote, ...]) -> str | None:
    """Bind a tunnel's TCP remotes, then its UDP remotes; all or nothing.

    Returns None, or the refusal text for the ``config`` answer.
    """
    udp = tuple(r for r in remotes if r.remote_proto == "udp")
    tcp = tuple(r for r in remotes if r.remote_proto != "udp")
    error = await ports.bind(tunnel, tcp)
    if error is None and udp:
        error = await ports.udp.bind(tunnel, udp)
        if error is not None:
            ports.unbind(tunnel)
    return error


class _Flow:
    __slots__ = ("addr", "last_active", "src", "tunnel")

    def __init__(self, src: str, addr: Any, tunnel: Tunnel) -> None:
        self.src = src
        self.addr = addr
        self.tunnel = tunnel
        self.last_active = time.monotonic()


class UdpChannel:
    """One tunnel's ``chisel`` channel for one UDP endpoint (asyncssh session)."""

    def __init__(self, endpoint: UdpEndpoint, tunnel: Tunnel) -> None:
        self.endpoint = endpoint
        self.tunnel = tunnel
        self.chan: Any = None
        self.ready = False
        self.closed = False
        self.paused = False
        self.pending: list[UdpPacket] = []
        settings = endpoint.gateway.settings
        self._encoder = GobEncoder(max_payload_bytes=settings.udp_max_payload_bytes)
        self._decoder = GobDecoder(max_payload_bytes=settings.udp_max_payload_bytes)

    async def open(self) -> None:
        """Open the channel; on refusal tell the endpoint (never raises)."""
        ep = self.endpoint
        ssh = self.tunnel.ssh
        timeout_s = ep.gateway.settings.channel_open_timeout_s
        try:
            if ssh is None:
                raise ChannelOpenFailed("no SSH connection", reason="tunnel not ready")
            async with asyncio.timeout(timeout_s):
                await ssh.open_channel(ep.extra, lambda: self)
        except ChannelOpenFailed as exc:
            ep.channel_failed(self, exc.reason or str(exc))
            return
        except TimeoutError:
            ep.channel_failed(self, f"no answer within {timeout_s:g}s")
            return
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
            if len(self.pending) >= self.endpoint.gateway.settings.udp_max_pending:
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
        self.endpoint.channel_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


class UdpEndpoint(asyncio.DatagramProtocol):
    """One UDP ``secure-gateway:<port>`` of one stage."""

    def __init__(self, gateway: Gateway, stage: StageConfig, remote: Remote) -> None:
        self.gateway = gateway
        self.stage_key = stage.key
        self.bind_host = stage.bind_host
        self.port = int(remote.local_port)
        self.target = remote.target
        self.extra = remote.channel_extra
        self.allow = tuple(ipaddress.ip_network(c, strict=False) for c in stage.allow_cidrs)
        self.tunnels: list[Tunnel] = []
        self.flows: dict[str, _Flow] = {}
        self.channels: dict[int, UdpChannel] = {}
        self.refused_until: dict[int, float] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0
        self.refused_sources = 0
        self.refused_flows = 0
        self.oversized = 0
        self.unknown_answers = 0
        self.log = ContextLogger(_log, stage=stage.key, port=f"{self.port}/udp")

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
        if flow is None and not self._allows(str(addr[0])):
            self.refused_sources += 1
            if should_log(self.refused_sources):
                self.log.warning(
                    "dropped a datagram from %s: not in the stage allowlist (%d so far)",
                    addr[0],
                    self.refused_sources,
                )
            return
        settings = self.gateway.settings
        if len(data) > settings.udp_max_payload_bytes:
            self.oversized += 1
            self.dropped += 1
            if should_log(self.oversized):
                self.log.warning(
                    "dropped a datagram of %d bytes from %s: over the %d-byte UDP limit "
                    "(chisel's); %d dropped so far",
                    len(data),
                    src,
                    settings.udp_max_payload_bytes,
                    self.oversized,
                )
            return
        if flow is None:
            flow = self._new_flow(src, addr)
            if flow is None:
                return
        flow.last_active = time.monotonic()
        channel = self._channel_for(flow.tunnel)
        if channel is not None and channel.send(UdpPacket(src, data)):
            self.packets_in += 1
        else:
            self.dropped += 1

    def _allows(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.allow)

    def _new_flow(self, src: str, addr: Any) -> _Flow | None:
        settings = self.gateway.settings
        if len(self.flows) >= settings.udp_max_flows:
            self.refused_flows += 1
            self.dropped += 1
            if should_log(self.refused_flows):
                self.log.warning(
                    "dropped a datagram from %s: already %d UDP flows (the limit); idle "
                    "flows expire after %gs (%d dropped so far)",
                    src,
                    len(self.flows),
                    settings.udp_idle_timeout_s,
                    self.refused_flows,
                )
            return None
        tunnel = self._pick()
        if tunnel is None:
            self.dropped += 1
            return None
        flow = _Flow(src, addr, tunnel)
        self.flows[src] = flow
        if self._timer is None:
            self._arm_sweep()
        return flow

    def _pick(self) -> Tunnel | None:
        """Round robin over the pool, skipping tunnels that just refused the channel."""
        pool = [t for t in self.tunnels if t.ssh is not None]
        if not pool:
            return None
        now = time.monotonic()
        usable = [t for t in pool if self.refused_until.get(t.id, 0.0) <= now]
        if not usable:
            return None
        start = self._next % len(usable)
        self._next = start + 1
        return usable[start]

    def _channel_for(self, tunnel: Tunnel) -> UdpChannel | None:
        channel = self.channels.get(tunnel.id)
        if channel is not None:
            return channel
        channel = UdpChannel(self, tunnel)
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
        self.transport.sendto(packet.payload, flow.addr)
        self.packets_out += 1

    def channel_failed(self, channel: UdpChannel, reason: str) -> None:
        tunnel = channel.tunnel
        delay = self.gateway.settings.udp_reopen_delay_s
        self.log.warning(
            "tunnel %d refused the UDP channel to %s: %s (not asked again for %gs)",
            tunnel.id,
            self.target,
            reason,
            delay,
        )
        self.refused_until[tunnel.id] = time.monotonic() + delay
        channel.closed = True
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
        if tunnel in self.tunnels:
            self.tunnels.remove(tunnel)
        self.refused_until.pop(tunnel.id, None)
        channel = self.channels.pop(tunnel.id, None)
        if channel is not None:
            channel.close()
        for src in [s for s, f in self.flows.items() if f.tunnel is tunnel]:
            del self.flows[src]

    # -- expiry -------------------------------------------------------------------------

    def _arm_sweep(self) -> None:
        interval = max(0.05, self.gateway.settings.udp_idle_timeout_s / 4)
        self._timer = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        deadline = time.monotonic() - self.gateway.settings.udp_idle_timeout_s
        for src in [s for s, f in self.flows.items() if f.last_active <= deadline]:
            del self.flows[src]
            self.log.debug("UDP flow %s expired", src)
        if self.flows and self.transport is not None:
            self._arm_sweep()

    def snapshot(self) -> dict[str, object]:
        return {
            "endpoint": f"secure-gateway:{self.port}/udp",
            "bind": f"{self.bind_host}:{self.port}/udp",
            "target": f"{self.target}/udp",
            "tunnels": [t.id for t in self.tunnels],
            "flows": len(self.flows),
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "dropped": self.dropped,
            "refused_sources": self.refused_sources,
        }


class UdpPortTable:
    """All UDP endpoints of the gateway, keyed by (bind address, port)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.endpoints: dict[tuple[str, int], UdpEndpoint] = {}

    async def bind(self, tunnel: Tunnel, remotes: tuple[Remote, ...]) -> str | None:
        """Put ``tunnel`` into the pools of its UDP remotes; all or nothing.

        Returns None, or the refusal text.
        """
        stage = tunnel.stage
        refusal = contested_port(self.gateway.stages.stages(), stage, remotes, "UDP ")
        if refusal is not None:
            return refusal
        for r in remotes:
            existing = self.endpoints.get((stage.bind_host, int(r.local_port)))
            if existing is None:
                continue
            if existing.stage_key != stage.key:
                return (
                    f"UDP port {r.local_port} is reserved by another stage on "
                    f"{stage.bind_host}; choose another port"
                )
            if existing.target != r.target:
                return (
                    f"Server cannot listen on {r.describe()}: UDP port {r.local_port} is "
                    f"already served with target {existing.target} by another connector of "
                    "this stage"
                )
        joined: list[UdpEndpoint] = []
        for r in remotes:
            key = (stage.bind_host, int(r.local_port))
            endpoint = self.endpoints.get(key)
            if endpoint is None:
                endpoint = UdpEndpoint(self.gateway, stage, r)
                try:
                    await endpoint.listen()
                except OSError as exc:
                    for made in joined:
                        self._leave(made, tunnel)
                    return f"Server cannot listen on {r.describe()}: {exc.strerror or exc}"
                if key in self.endpoints:  # raced with another tunnel's bind
                    endpoint.close()
                    endpoint = self.endpoints[key]
                else:
                    self.endpoints[key] = endpoint
            endpoint.tunnels.append(tunnel)
            joined.append(endpoint)
        return None

    def _leave(self, endpoint: UdpEndpoint, tunnel: Tunnel) -> None:
        endpoint.remove_tunnel(tunnel)
        if not endpoint.tunnels:
            endpoint.close()
            self.endpoints.pop((endpoint.bind_host, endpoint.port), None)

    def unbind(self, tunnel: Tunnel) -> None:
        """Remove ``tunnel`` from every pool; close endpoints left empty."""
        for endpoint in list(self.endpoints.values()):
            if tunnel in endpoint.tunnels:
                self._leave(endpoint, tunnel)

    def for_stage(self, stage_key: str) -> list[UdpEndpoint]:
        return [e for e in self.endpoints.values() if e.stage_key == stage_key]

    def close_all(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close()
        self.endpoints.clear()
