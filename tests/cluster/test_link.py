"""The node link's handshake: secret, replay, bounds; and its byte path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qanat.cluster import linkwire
from qanat.cluster.link import LinkDialer, LinkServer
from qanat.errors import ChannelOpenFailed
from support.timing import eventually

SECRET = b"s" * 32


def now_ms() -> int:
    return int(time.time() * 1000)


def test_requests_are_signed_fresh_and_single_use() -> None:
    seen = linkwire.NonceCache()
    line = linkwire.request_line(SECRET, node="a", stage="acme/Dev", port=8081, now_ms=now_ms(),
                                 nonce="n1")  # fmt: skip
    request = linkwire.parse_request(line.rstrip(b"\n"), SECRET, now_ms(), seen)
    assert (request.node, request.stage, request.port) == ("a", "acme/Dev", 8081)
    with pytest.raises(linkwire.LinkRefused, match="replayed"):
        linkwire.parse_request(line.rstrip(b"\n"), SECRET, now_ms(), seen)
    with pytest.raises(linkwire.LinkRefused, match="secret"):
        linkwire.parse_request(line.rstrip(b"\n"), b"x" * 32, now_ms(), linkwire.NonceCache())
    old = linkwire.request_line(SECRET, node="a", stage="s", port=1, now_ms=now_ms() - 60_000,
                                nonce="n2")  # fmt: skip
    with pytest.raises(linkwire.LinkRefused, match="NTP"):
        linkwire.parse_request(old.rstrip(b"\n"), SECRET, now_ms(), seen)
    tampered = line.replace(b"8081", b"8082")
    with pytest.raises(linkwire.LinkRefused, match="secret"):
        linkwire.parse_request(tampered.rstrip(b"\n"), SECRET, now_ms(), linkwire.NonceCache())
    for junk in (b"GET / HTTP/1.1", b"QLINK1 {", b"QLINK1 []"):
        with pytest.raises(linkwire.LinkRefused):
            linkwire.parse_request(junk, SECRET, now_ms(), seen)
    assert linkwire.parse_reply(linkwire.reply_line(SECRET, "n", None)[:-1], SECRET, "n") is None
    no = linkwire.reply_line(SECRET, "n", "tunnel 3: dial refused")[:-1]
    assert linkwire.parse_reply(no, SECRET, "n") == "tunnel 3: dial refused"
    with pytest.raises(linkwire.LinkRefused):
        linkwire.parse_reply(no, SECRET, "other nonce")
    with pytest.raises(ValueError, match="openssl rand"):
        linkwire.check_secret(b"short", "--cluster-secret-file x")


def test_the_nonce_cache_is_bounded() -> None:
    cache = linkwire.NonceCache(max_entries=100)
    for i in range(1000):
        assert cache.add(str(i), now_ms())
    assert len(cache) <= 100


class Collector:
    """A session like a splice's channel end, recording what it gets."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.chan: Any = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def session_started(self) -> None: ...

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class EchoAfterOk(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data.upper())

    def eof_received(self) -> bool:
        self.t.write_eof()
        return True


async def test_a_channel_over_the_link_carries_bytes_and_half_close() -> None:
    asked: list[linkwire.LinkRequest] = []
    served: list[asyncio.Transport] = []

    def relay(request: linkwire.LinkRequest, transport: asyncio.Transport, rest: bytes) -> None:
        asked.append(request)
        served.append(transport)
        if request.port == 1:
            server.answer(transport, request.nonce, "tunnel 4: dial 10.0.0.5:1: refused")
            return
        server.answer(transport, request.nonce, None)
        transport.write(b"banner\n")
        transport.set_protocol(EchoAfterOk(transport))
        transport.resume_reading()

    server = LinkServer(SECRET, relay)
    host, port = await server.listen("127.0.0.1", 0)
    try:
        session = Collector()
        dialer = LinkDialer(SECRET, "a", (host, port), "acme/Dev", 8081)
        await dialer.open_channel(b"x", lambda: session, timeout_s=2)
        await eventually(lambda: session.data == b"banner\n", "the banner sent with the OK")
        session.chan.write(b"hello")
        session.chan.write_eof()
        await eventually(lambda: session.eof, "the echo's EOF")
        assert bytes(session.data) == b"banner\nHELLO"
        assert asked[0].node == "a"
        assert asked[0].port == 8081

        with pytest.raises(ChannelOpenFailed, match=r"dial 10\.0\.0\.5:1"):
            await LinkDialer(SECRET, "a", (host, port), "acme/Dev", 1).open_channel(
                b"x", Collector, timeout_s=2
            )
        with pytest.raises(ChannelOpenFailed, match="closed before answering"):
            await LinkDialer(b"w" * 32, "a", (host, port), "acme/Dev", 8081).open_channel(
                b"x", Collector, timeout_s=2
            )
        assert server.refused == 1
        assert len(asked) == 2
        session.chan.close()
    finally:
        for transport in served:
            transport.close()
        server.close()
        await asyncio.sleep(0)


async def test_unreachable_and_silent_nodes_fail_the_attempt() -> None:
    writers: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await LinkDialer(SECRET, "a", ("127.0.0.1", port), "s", 1).open_channel(
                b"x", Collector, timeout_s=0.3
            )
    finally:
        for w in writers:
            w.close()
        silent.close()
        await silent.wait_closed()
    with pytest.raises(ChannelOpenFailed, match=r"node link 127\.0\.0\.1"):
        await LinkDialer(SECRET, "a", ("127.0.0.1", port), "s", 1).open_channel(
            b"x", Collector, timeout_s=2
        )


async def test_a_client_that_sends_nothing_or_too_much_is_cut() -> None:
    server = LinkServer(SECRET, lambda *a: None)
    host, port = await server.listen("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"x" * (linkwire.MAX_LINE + 10))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert server.refused == 1
    finally:
        server.close()
