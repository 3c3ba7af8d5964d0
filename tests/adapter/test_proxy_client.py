"""The HTTP CONNECT client against scripted proxies on loopback: the edge
cases a real proxy rarely shows (split heads, stray bytes, non-HTTP)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import pytest

from qanat.errors import ProxyError
from qanat.net.proxy import ProxySpec, open_proxied_socket
from qanat.runtime import run

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _with_proxy(script: Script, check: Callable[[ProxySpec], Awaitable[None]]) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await script(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncio.timeout(5):
                await check(ProxySpec("http", "127.0.0.1", port, "dom\\u", "p@ss:w"))
        finally:
            server.close()

    run(main())


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def test_connect_with_split_answer_then_bytes_flow() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_head(reader))
        for piece in (b"HTTP/1.1 200 Conn", b"ection established\r\nVia: x\r", b"\n\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(await reader.readexactly(5))  # echo once tunnelled
        await writer.drain()

    async def check(proxy: ProxySpec) -> None:
        loop = asyncio.get_running_loop()
        sock = await open_proxied_socket(proxy, "2001:db8::1", 443)
        try:
            await loop.sock_sendall(sock, b"hello")
            assert await loop.sock_recv(sock, 5) == b"hello"
        finally:
            sock.close()

    _with_proxy(script, check)
    head = seen[0].decode()
    assert head.startswith("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n")
    token = base64.b64encode(b"dom\\u:p@ss:w").decode()
    assert f"Proxy-Authorization: Basic {token}\r\n" in head


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-early", "sent data right after accepting CONNECT"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "did not answer CONNECT with HTTP"),
        (b"", "closed the connection without answering CONNECT"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "could not reach the gateway gw.example.com:443"),
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "rejected the user name"),
        (b"HTTP/1.0 418 I'm a teapot\r\n\r\n", "answered CONNECT to gw.example.com:443 with 418"),
    ],
)
def test_connect_failures(answer: bytes, message: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(answer)
        await writer.drain()

    async def check(proxy: ProxySpec) -> None:
        with pytest.raises(ProxyError, match=message) as info:
            await open_proxied_socket(proxy, "gw.example.com", 443)
        assert "p@ss" not in str(info.value)

    _with_proxy(script, check)


def test_oversized_answer_head() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 40_000)
        await writer.drain()
        await asyncio.sleep(1)

    async def check(proxy: ProxySpec) -> None:
        with pytest.raises(ProxyError, match="oversized"):
            await open_proxied_socket(proxy, "gw.example.com", 443)

    _with_proxy(script, check)
