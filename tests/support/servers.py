"""Small asyncio servers the tests put around a tunnel.

- :func:`echo_server`: the private endpoint, echoes every byte.
- :class:`Relay`: a TCP relay between connector and gateway that logs every
  byte each way and can rewrite the stream (for re-framing WebSocket data).
- :func:`http_exchange`: send raw bytes, read the whole answer until close.
- :func:`free_port`: a TCP port that was free a moment ago (for remotes);
  :func:`free_port_range`: a run of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.timing import scaled
from support.wsframes import parse_http_head, split_http_head

Transform = Callable[[bytes], bytes]


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on right now (bind to 0, read it, close).

    The one free-port helper of the whole suite (every test folder uses it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = text.split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def stable_port(host: str = "127.0.0.1") -> int:
    """A free TCP port outside the kernel's ephemeral range.

    For a server that a test stops and starts again on the same port: while
    it is down, a port from :func:`free_port` (an ephemeral one) can be taken
    by any outgoing connection's source port, and the restart then fails
    with "address already in use". Ports below the ephemeral range are never
    handed out that way.
    """
    low, _high = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, min(low, 32768))
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port between 20000 and the ephemeral range in 200 tries")


def free_port_both(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP (TCP and UDP endpoints may share a number)."""
    for _ in range(50):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both TCP and UDP in 50 tries")


def free_port_range(count: int) -> int:
    """A base port with ``count`` free ports after it (checked by binding them)."""
    for base in range(10000, 32000, 1000):
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    pytest.skip(f"no {count} consecutive free ports between 10000 and 32000")


@asynccontextmanager
async def echo_server(host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Serve an echo endpoint on an ephemeral port; yield the port."""
    writers: set[asyncio.StreamWriter] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            writers.discard(writer)

    server = await asyncio.start_server(echo, host, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        await server.wait_closed()


async def roundtrip(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Connect to ``port`` (an app connection), send ``payload``, half-close,
    and read everything until the far side closes."""
    async with asyncio.timeout(scaled(10)):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            writer.write_eof()
            return await reader.read()
        finally:
            writer.close()


async def http_exchange(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``request`` and return everything the server sends until it closes."""
    async with asyncio.timeout(scaled(5)):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            return await reader.read()
        finally:
            writer.close()


def parse_response(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a complete HTTP response."""
    parts = split_http_head(raw)
    assert parts is not None, f"no complete HTTP response head in {raw[:200]!r}"
    head, body = parts
    start, headers = parse_http_head(head)
    return int(start.split(" ", 2)[1]), headers, body


@dataclass
class RelayedConnection:
    """What went through one relayed connection, each way."""

    up: bytearray = field(default_factory=bytearray)  # client -> server
    down: bytearray = field(default_factory=bytearray)  # server -> client
    up_chunks: list[bytes] = field(default_factory=list)
    down_chunks: list[bytes] = field(default_factory=list)


class Relay:
    """A byte-logging TCP relay; optional per-connection stream rewriters."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        up_transform: Callable[[], Transform] | None = None,
        down_transform: Callable[[], Transform] | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.up_transform = up_transform
        self.down_transform = down_transform
        self.connections: list[RelayedConnection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=scaled(5))
        await self._server.wait_closed()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        record = RelayedConnection()
        self.connections.append(record)
        self._writers.add(c_writer)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.transport.abort()
            self._writers.discard(c_writer)
            return
        self._writers.add(s_writer)
        up = self.up_transform() if self.up_transform else None
        down = self.down_transform() if self.down_transform else None
        for coro in (
            self._pump(c_reader, s_writer, record.up, record.up_chunks, up),
            self._pump(s_reader, c_writer, record.down, record.down_chunks, down),
        ):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log: bytearray,
        chunks: list[bytes],
        transform: Transform | None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                log += data
                chunks.append(data)
                writer.write(transform(data) if transform else data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.transport.abort()
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
