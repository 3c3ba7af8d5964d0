"""The SSH algorithms the gateway offers, read off the wire (black box).

The gateway's KEXINIT is parsed by hand from the upgraded stream: whatever
SSH implementation the gateway runs, it must offer exactly the reviewed lists
of ``qanat.wire.sshalgs`` (no compression, nothing legacy), and a client
offering only something forbidden is refused before any key exchange.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest

from qanat.wire import sshalgs
from support.stockpeer import HandFramed, open_upgraded, outsystemscc_request
from support.timing import scaled
from support.tunnels import running_gateway

KEXINIT = 20
DISCONNECT = 1
FIELDS = (
    "kex",
    "host_key",
    "enc_c2s",
    "enc_s2c",
    "mac_c2s",
    "mac_s2c",
    "comp_c2s",
    "comp_s2c",
    "lang_c2s",
    "lang_s2c",
)


class Stream(asyncio.Protocol):
    """The bytes the gateway sends after the upgrade, and whether it closed."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.changed = asyncio.Event()
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.changed.set()

    async def until(self, done: Any) -> Any:
        async with asyncio.timeout(scaled(10)):
            while (result := done()) is None:
                if self.closed:
                    return None
                self.changed.clear()
                await self.changed.wait()
        return result

    def version_line(self) -> bytes | None:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return None
        line = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 2]
        return line

    def packet(self) -> bytes | None:
        """One unencrypted binary packet's payload (RFC 4253 section 6)."""
        if len(self.buffer) < 5:
            return None
        length, padding = struct.unpack(">IB", self.buffer[:5])
        if len(self.buffer) < 4 + length:
            return None
        payload = bytes(self.buffer[5 : 4 + length - padding])
        del self.buffer[: 4 + length]
        return payload


def parse_kexinit(payload: bytes) -> dict[str, list[str]]:
    assert payload[0] == KEXINIT
    offset, lists = 17, {}
    for name in FIELDS:
        (size,) = struct.unpack(">I", payload[offset : offset + 4])
        text = payload[offset + 4 : offset + 4 + size].decode()
        lists[name] = text.split(",") if text else []
        offset += 4 + size
    return lists


def kexinit(**lists: tuple[str, ...]) -> bytes:
    """A client KEXINIT packet with the reviewed lists, except those given."""
    defaults = {
        "kex": sshalgs.KEX_ALGS,
        "host_key": sshalgs.HOST_KEY_ALGS,
        "enc_c2s": sshalgs.ENCRYPTION_ALGS,
        "enc_s2c": sshalgs.ENCRYPTION_ALGS,
        "mac_c2s": sshalgs.MAC_ALGS,
        "mac_s2c": sshalgs.MAC_ALGS,
        "comp_c2s": sshalgs.COMPRESSION_ALGS,
        "comp_s2c": sshalgs.COMPRESSION_ALGS,
        "lang_c2s": (),
        "lang_s2c": (),
    }
    defaults.update(lists)
    payload = bytes([KEXINIT]) + os.urandom(16)
    for name in FIELDS:
        text = ",".join(defaults[name]).encode()
        payload += struct.pack(">I", len(text)) + text
    payload += b"\x00" + struct.pack(">I", 0)
    padding = 8 - (len(payload) + 5) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">IB", len(payload) + padding + 1, padding) + payload + bytes(padding)


async def open_ssh(env: Any) -> tuple[Stream, HandFramed]:
    request = outsystemscc_request(
        f"127.0.0.1:{env.port}", f"/{env.stage.address_id}", token=env.token
    )
    head_reader, head = await open_upgraded(env.port, request)
    assert head.startswith(b"HTTP/1.1 101 "), head
    stream = Stream()
    framed = HandFramed.attach(head_reader, stream, mask=True)
    framed.write(b"SSH-chisel-v3-client\r\n")
    line = await stream.until(stream.version_line)
    assert line is not None
    assert line.startswith(b"SSH-"), line
    return stream, framed


async def test_the_gateway_offers_exactly_the_reviewed_lists(tmp_path):
    async with running_gateway(tmp_path) as env:
        stream, framed = await open_ssh(env)
        try:
            offered = parse_kexinit(await stream.until(stream.packet))
        finally:
            framed.abort()
    named = set().union(*offered.values())
    assert not named & sshalgs.FORBIDDEN, named & sshalgs.FORBIDDEN
    assert offered["comp_c2s"] == offered["comp_s2c"] == ["none"]
    # Beyond the reviewed lists, only the protocol's extension markers.
    markers = {n for n in offered["kex"] if n.startswith(("ext-info-", "kex-strict-"))}
    assert set(offered["kex"]) - markers <= set(sshalgs.KEX_ALGS)
    assert set(offered["enc_s2c"]) <= set(sshalgs.ENCRYPTION_ALGS)
    assert set(offered["mac_s2c"]) <= set(sshalgs.MAC_ALGS)
    assert set(offered["host_key"]) <= set(sshalgs.HOST_KEY_ALGS)
    for legacy in ("diffie-hellman-group14-sha1", "hmac-sha1", "umac-64@openssh.com", "zlib"):
        assert legacy not in named


@pytest.mark.parametrize(
    "lists",
    [
        {"comp_c2s": ("zlib@openssh.com",), "comp_s2c": ("zlib@openssh.com",)},
        {"comp_c2s": ("zlib",), "comp_s2c": ("zlib",)},
        {"kex": ("diffie-hellman-group14-sha1",)},
        {
            "mac_c2s": ("hmac-sha1",),
            "mac_s2c": ("hmac-sha1",),
            "enc_c2s": ("aes128-ctr",),
            "enc_s2c": ("aes128-ctr",),
        },
        {
            "mac_c2s": ("umac-64@openssh.com",),
            "mac_s2c": ("umac-64@openssh.com",),
            "enc_c2s": ("aes128-ctr",),
            "enc_s2c": ("aes128-ctr",),
        },
    ],
    ids=["zlib-openssh", "zlib", "group14-sha1", "hmac-sha1", "umac-64"],
)
async def test_a_client_offering_only_a_forbidden_algorithm_is_refused(tmp_path, lists):
    async with running_gateway(tmp_path) as env:
        stream, framed = await open_ssh(env)
        try:
            await stream.until(stream.packet)  # the gateway's KEXINIT
            framed.write(kexinit(**lists))
            # Refused: a DISCONNECT, or the connection simply closes, and
            # never the start of a key exchange.
            answer = await stream.until(stream.packet)
            assert answer is None or answer[0] == DISCONNECT, answer
        finally:
            framed.abort()


def test_the_reviewed_constant_names_nothing_forbidden():
    lists = (
        sshalgs.KEX_ALGS,
        sshalgs.ENCRYPTION_ALGS,
        sshalgs.MAC_ALGS,
        sshalgs.COMPRESSION_ALGS,
        sshalgs.HOST_KEY_ALGS,
    )
    assert not set().union(*lists) & sshalgs.FORBIDDEN
    assert sshalgs.COMPRESSION_ALGS == ("none",)
