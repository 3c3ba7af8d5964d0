"""Both ends of a UDP channel without SSH: the connector's exit against a
real UDP endpoint on loopback and a fake channel, and the gateway's rule that
answers only go to flows the answering tunnel was given."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qanat.connector.udp import UdpLimits, open_udp_exit
from qanat.errors import ChannelOpenFailed
from qanat.gateway.balancer import Member
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import StageConfig
from qanat.gateway.udp import UdpChannel, UdpPort, format_src
from qanat.runtime import run
from qanat.wire.gob import GobDecoder, GobEncoder, UdpPacket
from qanat.wire.remotes import decode_remote


class FakeChannel:
    """What an SSH channel offers the session: write, close, resume_reading."""

    def __init__(self) -> None:
        self.decoder = GobDecoder()
        self.packets: list[UdpPacket] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.packets.extend(self.decoder.feed(data))

    def close(self) -> None:
        self.closed = True

    def resume_reading(self) -> None:
        pass


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sources: list[Any] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sources.append(addr)
        self.transport.sendto(data.upper() if len(data) < 100 else data + b"!", addr)


async def _until(predicate: Any, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "deadline passed"
        await asyncio.sleep(0.01)


def test_exit_sends_per_flow_and_answers_with_the_same_src(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="qanat")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        udp_exit = await open_udp_exit(
            "127.0.0.1", port, UdpLimits(idle_timeout_s=0.2, max_payload_bytes=120), 1.0
        )
        chan = FakeChannel()
        udp_exit.connection_made(chan)
        udp_exit.session_started()
        encoder = GobEncoder()
        # One gob stream from the gateway, delivered in awkward pieces.
        stream = b"".join(
            encoder.encode(UdpPacket(src, payload))
            for src, payload in [("[::1]:5001", b"one"), ("10.9.8.7:5002", b"two")]
        )
        for i in range(0, len(stream), 7):
            udp_exit.data_received(stream[i : i + 7])
        await _until(lambda: len(chan.packets) == 2)
        assert sorted(chan.packets, key=lambda p: p.src) == [
            UdpPacket("10.9.8.7:5002", b"TWO"),
            UdpPacket("[::1]:5001", b"ONE"),
        ]
        assert len({addr[1] for addr in echo.sources}) == 2  # one socket per flow
        # An answer over the limit is dropped and logged; the flow goes on.
        udp_exit.data_received(encoder.encode(UdpPacket("[::1]:5001", b"x" * 120)))
        await _until(lambda: udp_exit.oversized == 1)
        assert "over 120 bytes" in caplog.text
        # Idle flows close their sockets.
        await _until(lambda: not udp_exit.flows)
        # A broken stream closes the channel, without raising.
        udp_exit.data_received(b"\x05\x00\x00\x00\x00\x00")
        assert chan.closed
        assert udp_exit.closed
        transport.close()

    run(main())


def test_exit_refuses_an_unresolvable_target() -> None:
    async def main() -> None:
        with pytest.raises(ChannelOpenFailed) as info:
            await open_udp_exit("no-such-host.invalid", 53, UdpLimits(), 2.0)
        assert "cannot resolve 'no-such-host.invalid'" in info.value.reason

    run(main())


def test_gateway_answers_only_known_flows_of_the_answering_tunnel(tmp_path: Path) -> None:
    async def main() -> None:
        settings = GatewaySettings(data_dir=tmp_path)
        ctx: Any = SimpleNamespace(settings=settings)
        stage = StageConfig(key="acme/dev", address_id="sg_x")
        remote = decode_remote("R:8053:10.0.0.2:53/udp")
        endpoint = UdpPort(ctx, stage, remote)
        sent: list[tuple[bytes, Any]] = []
        fake_transport: Any = SimpleNamespace(
            sendto=lambda data, addr: sent.append((data, addr)), close=lambda: None
        )
        endpoint.connection_made(fake_transport)
        tunnel_a: Any = SimpleNamespace(
            id=1, ssh=object(), tasks=None, serving=True, draining=False, missed_pings=0
        )
        tunnel_b: Any = SimpleNamespace(
            id=2, ssh=object(), tasks=None, serving=True, draining=False, missed_pings=0
        )
        member_a = Member(tunnel_a, remote.target, remote.channel_extra)
        member_b = Member(tunnel_b, remote.target, remote.channel_extra)
        endpoint.pool.add(member_a)
        endpoint.pool.add(member_b)
        app = ("127.0.0.1", 40001)
        flow = endpoint._new_flow(format_src(app), app)
        assert flow is not None
        assert flow.tunnel is tunnel_a
        channel_a, channel_b = UdpChannel(endpoint, member_a), UdpChannel(endpoint, member_b)
        endpoint.reply(channel_a, UdpPacket("127.0.0.1:40001", b"answer"))
        endpoint.reply(channel_b, UdpPacket("127.0.0.1:40001", b"not yours"))
        endpoint.reply(channel_a, UdpPacket("192.0.2.1:53", b"nowhere"))
        assert sent == [(b"answer", app)]
        assert endpoint.unknown_answers == 2
        endpoint.close()

    run(main())


def test_src_is_written_as_go_does() -> None:
    assert format_src(("127.0.0.1", 40001)) == "127.0.0.1:40001"
    assert format_src(("::1", 53, 0, 0)) == "[::1]:53"
    assert format_src(("fe80::1%eth0", 53, 0, 2)) == "[fe80::1%eth0]:53"
