"""The connector's end of a UDP channel: gob packets in, datagrams out.

The gateway opens one ``chisel`` channel with extra data ``host:port/udp``
per UDP port it serves through this tunnel (chisel does the same, one
channel per listener). The channel carries a gob stream of
``udpPacket{Src, Payload}`` each way; ``Src`` is the address of the app that
sent the datagram and names a *flow*.

For each flow the connector keeps one UDP socket connected to the target, so
the endpoint sees one stable source port per app and its answers come back
on that socket; they are sent up the channel with the flow's ``Src``
unchanged, which is how the gateway (ours or chisel's) returns them to the
right app. Like chisel's exit side::

    channel --gob--> flow "127.0.0.1:40001" -> socket A --UDP--> target
                     flow "127.0.0.1:40002" -> socket B --UDP--> target
    channel <--gob-- (Src of the flow)      <- answers on A / B

Limits (:class:`UdpLimits`): at most ``max_flows`` flows (a packet from one
more source is dropped and logged); a flow idle for ``idle_timeout_s`` is
forgotten and its socket closed; datagrams over ``max_payload_bytes``
(chisel's 9012) are dropped and logged. When the channel's window is full,
answers are dropped rather than queued: this is UDP.

Everything runs in callbacks (socket readers, one sweep timer); nothing here
raises into the event loop: errors close a flow or the channel and are
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qanat.errors import ChannelOpenFailed, GobError, LocalProtocolError
from qanat.logs import ContextLogger
from qanat.telemetry.throttle import Throttle, held_back
from qanat.wire.gob import MAX_PAYLOAD_BYTES, GobDecoder, GobEncoder, UdpPacket

_log = logging.getLogger("qanat.connector.udp")

#: Datagrams read from one flow socket per wake-up, so one busy endpoint
#: cannot starve the rest of the loop.
_READS_PER_WAKEUP = 64


@dataclass(frozen=True, slots=True)
class UdpLimits:
    """Bounds of one UDP channel on the connector side.

    Attributes:
        idle_timeout_s: a flow without traffic for this long is closed.
        max_flows: most flows (app sources) at once.
        max_payload_bytes: largest datagram carried (chisel: 9012).
    """

    idle_timeout_s: float = 60.0
    max_flows: int = 100
    max_payload_bytes: int = MAX_PAYLOAD_BYTES


class _Flow:
    __slots__ = ("last_active", "sock", "src")

    def __init__(self, src: str, sock: socket.socket) -> None:
        self.src = src
        self.sock = sock
        self.last_active = time.monotonic()


async def open_udp_exit(
    host: str,
    port: int,
    limits: UdpLimits,
    timeout_s: float,
    on_close: Callable[[UdpExit], None] | None = None,
) -> UdpExit:
    """Resolve the target (on the private side) and make the channel's session.

    Raises:
        ChannelOpenFailed: the target does not resolve in time.
    """
    loop = asyncio.get_running_loop()
    target = f"{host}:{port}/udp"
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except TimeoutError:
        raise ChannelOpenFailed(
            "dial timeout", reason=f"dial {target}: no answer from DNS within {timeout_s:g}s"
        ) from None
    except socket.gaierror as exc:
        raise ChannelOpenFailed(
            "dial failed", reason=f"dial {target}: cannot resolve {host!r} ({exc.strerror})"
        ) from None
    family, _, proto, _, address = infos[0]
    return UdpExit(target, family, proto, address, limits, on_close)


class UdpExit:
    """asyncssh session of one UDP channel (duck-typed like the splice's end).

    Attributes:
        packets_in / packets_out: datagrams sent to the target / back to the gateway.
        dropped: datagrams dropped (limits, full window, send errors).
    """

    def __init__(
        self,
        target: str,
        family: int,
        proto: int,
        address: Any,
        limits: UdpLimits,
        on_close: Callable[[UdpExit], None] | None = None,
    ) -> None:
        self.target = target
        self.family = family
        self.proto = proto
        self.address = address
        self.limits = limits
        self.flows: dict[str, _Flow] = {}
        self.chan: Any = None
        self.paused = False
        self.closed = False
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0
        self.refused_flows = 0
        self.oversized = 0
        # Dropped datagrams: counted always, logged at most 10 per 10 s per reason.
        self._drops = Throttle(burst=10, window_s=10.0)
        self._decoder = GobDecoder(max_payload_bytes=max(limits.max_payload_bytes, 1))
        self._encoder = GobEncoder(max_payload_bytes=limits.max_payload_bytes)
        self._timer: asyncio.TimerHandle | None = None
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self.log = ContextLogger(_log, udp=target)

    # -- asyncssh session interface ------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def session_started(self) -> None:
        # asyncssh holds inbound channel data until the owner starts reading.
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        try:
            packets = self._decoder.feed(data)
        except GobError as exc:
            self.log.warning("closing the UDP channel: the gateway sent a bad stream (%s)", exc)
            self.close()
            return
        for packet in packets:
            self._to_target(packet)

    def eof_received(self) -> bool:
        return False  # close the channel in turn

    def connection_lost(self, exc: BaseException | None) -> None:
        self._shutdown()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # -- flows ------------------------------------------------------------------

    def _to_target(self, packet: UdpPacket) -> None:
        flow = self.flows.get(packet.src)
        if flow is None:
            flow = self._new_flow(packet.src)
            if flow is None:
                self.dropped += 1
                return
        flow.last_active = time.monotonic()
        try:
            flow.sock.send(packet.payload)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # socket buffer full: drop, as the network would
            return
        except OSError as exc:
            # ECONNREFUSED from an earlier ICMP "port unreachable", and the like.
            self.dropped += 1
            self.log.debug("send to %s for %s failed: %s", self.target, packet.src, exc)
            return
        self.packets_in += 1

    def _new_flow(self, src: str) -> _Flow | None:
        if self.closed:
            return None
        if len(self.flows) >= self.limits.max_flows:
            self.refused_flows += 1
            held = self._drops.allow("flows")
            if held is not None:
                self.log.warning(
                    "dropped a datagram from %s: already %d UDP flows (the limit, "
                    "--udp-max-flows); idle flows expire after %gs (%d dropped so far)%s",
                    src,
                    len(self.flows),
                    self.limits.idle_timeout_s,
                    self.refused_flows,
                    held_back(held),
                )
            return None
        try:
            sock = socket.socket(self.family, socket.SOCK_DGRAM, self.proto)
        except OSError as exc:
            self.log.warning("cannot open a UDP socket for %s: %s", src, exc)
            return None
        try:
            sock.setblocking(False)
            sock.connect(self.address)
            flow = _Flow(src, sock)
            self._loop.add_reader(sock.fileno(), self._readable, flow)
        except OSError as exc:
            sock.close()
            self.log.warning("cannot reach %s for %s: %s", self.target, src, exc)
            return None
        self.flows[src] = flow
        self.log.debug("new UDP flow %s (%d open)", src, len(self.flows))
        if self._timer is None:
            self._arm_sweep()
        return flow

    def _readable(self, flow: _Flow) -> None:
        limit = self.limits.max_payload_bytes
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = flow.sock.recv(limit + 1)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # the target's port is closed; the app will time out
            except OSError as exc:
                self.log.debug("UDP flow %s failed: %s", flow.src, exc)
                self._close_flow(flow)
                return
            flow.last_active = time.monotonic()
            if len(data) > limit:
                self.oversized += 1
                self.dropped += 1
                held = self._drops.allow("oversized")
                if held is not None:
                    self.log.warning(
                        "dropped an answer from %s to %s: over %d bytes (the UDP limit)%s",
                        self.target,
                        flow.src,
                        limit,
                        held_back(held),
                    )
                continue
            self._to_gateway(flow.src, data)

    def _to_gateway(self, src: str, data: bytes) -> None:
        chan = self.chan
        if chan is None or self.paused or self.closed:
            self.dropped += 1
            return
        try:
            chan.write(self._encoder.encode(UdpPacket(src, data)))
        except LocalProtocolError as exc:
            self.dropped += 1
            self.log.debug("cannot encode an answer for %s: %s", src, exc)
            return
        except Exception as exc:  # a closing channel; never crash the loop
            self.dropped += 1
            self.log.debug("cannot send an answer for %s: %s", src, exc)
            return
        self.packets_out += 1

    def _close_flow(self, flow: _Flow) -> None:
        if self.flows.get(flow.src) is flow:
            del self.flows[flow.src]
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_reader(flow.sock.fileno())
        flow.sock.close()

    def _arm_sweep(self) -> None:
        interval = max(0.05, self.limits.idle_timeout_s / 4)
        self._timer = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        deadline = time.monotonic() - self.limits.idle_timeout_s
        for flow in [f for f in self.flows.values() if f.last_active <= deadline]:
            self.log.debug("UDP flow %s expired", flow.src)
            self._close_flow(flow)
        if self.flows and not self.closed:
            self._arm_sweep()

    # -- life ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel and every flow."""
        chan = self.chan
        self._shutdown()
        if chan is not None:
            try:
                chan.close()
            except Exception as exc:  # already closing
                self.log.debug("closing the UDP channel: %s", exc)

    def _shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for flow in list(self.flows.values()):
            self._close_flow(flow)
        if self._on_close is not None:
            self._on_close(self)
