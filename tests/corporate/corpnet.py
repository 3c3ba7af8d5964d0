"""Helpers for the corporate-network tests: a gateway and a connector in one
event loop, loopback endpoints (TCP echo, a small DNS server), waits with
deadlines. Timeouts scale with QANAT_TEST_TIMEOUT_FACTOR (tests/support/timing.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qanat.cli import build_parser
from qanat.connector.options import ConnectOptions, options_from_args
from qanat.connector.runner import Connector
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import MemoryStageSource, StageConfig
from qanat.gateway.tunnel import TunnelState
from qanat.runtime import run
from qanat.wire.tokens import hash_token, new_address_id, new_token
from support import servers
from support.servers import free_port_both  # noqa: F401 - re-exported for tests/corporate
from support.timing import scaled

T = TypeVar("T")


def seconds(value: float) -> float:
    return scaled(value)


def run_async(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    """Run one test body on the production loop (uvloop), bounded."""

    async def bounded() -> T:
        async with asyncio.timeout(seconds(timeout_s)):
            return await coro

    return run(bounded())


async def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = 5.0) -> Any:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + seconds(timeout_s)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds(timeout_s):g}s waiting for {what}")
        await asyncio.sleep(0.01)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    return servers.free_port(kind=kind)


def log_lines(caplog: Any, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


# -- the gateway side -------------------------------------------------------------------


class Stage:
    """A stage with a fresh token, in a memory stage source."""

    def __init__(self) -> None:
        self.token = new_token()
        self.address_id = new_address_id()
        self.config = StageConfig(
            key="acme/dev", address_id=self.address_id, token_hashes=(hash_token(self.token),)
        )
        self.source = MemoryStageSource()
        self.source.put(self.config)


@contextlib.asynccontextmanager
async def running_gateway(tmp_path: Path, stage: Stage, **settings: Any) -> AsyncIterator[Gateway]:
    ssl_context = settings.pop("ssl_context", None)
    gateway = Gateway(
        GatewaySettings(
            data_dir=tmp_path / "gw", listen_host="127.0.0.1", listen_port=0, **settings
        ),
        stage.source,
        ssl_context=ssl_context,
    )
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close(drain_s=2.0)


def gateway_url(gateway: Gateway, stage: Stage, host: str = "127.0.0.1") -> str:
    return f"{gateway.scheme}://{host}:{gateway.address[1]}/{stage.address_id}"


def active_tunnels(gateway: Gateway) -> list[Any]:
    return [t for t in gateway.tunnels.values() if t.state is TunnelState.ACTIVE]


# -- the connector side -----------------------------------------------------------------


def connect_options(
    address: str,
    remotes: list[str],
    token: str,
    *flags: str,
    environ: dict[str, str] | None = None,
) -> ConnectOptions:
    """Options exactly as ``qanat connect`` parses them."""
    argv = ["connect", "--header", f"token: {token}", *flags, address, *remotes]
    args = build_parser().parse_args(argv)
    return options_from_args(args, environ=environ or {})


@contextlib.asynccontextmanager
async def running_connector(options: ConnectOptions) -> AsyncIterator[Connector]:
    connector = Connector(options)
    task = asyncio.get_running_loop().create_task(connector.run(), name="test-connector")
    try:
        yield connector
    finally:
        connector.stop_event.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, seconds(5))
        if not task.done():
            task.cancel()


async def run_connector_to_end(options: ConnectOptions, timeout_s: float = 10.0) -> int:
    """Run a connector that must give up by itself (max retry count)."""
    connector = Connector(options)
    return await asyncio.wait_for(connector.run(), seconds(timeout_s))


# -- endpoints --------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def echo_roundtrip(port: int, payload: bytes = b"ping through the tunnel") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(seconds(5)):
            return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def app_reaches_endpoint(port: int, timeout_s: float = 5.0) -> None:
    """Wait until an app connection to the gateway port is echoed end to end."""
    deadline = time.monotonic() + seconds(timeout_s)
    while True:
        try:
            assert await echo_roundtrip(port) == b"ping through the tunnel"
            return
        except (OSError, asyncio.IncompleteReadError, AssertionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


# -- a small DNS server and client --------------------------------------------------------


def dns_query(query_id: int, name: str) -> bytes:
    """A DNS query for ``name`` type A, class IN."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return header + labels + struct.pack("!HH", 1, 1)


def dns_answer_address(answer: bytes) -> tuple[int, str]:
    """(id, first A record) of a DNS answer built by :class:`DnsServer`."""
    query_id, flags, _, ancount, _, _ = struct.unpack("!HHHHHH", answer[:12])
    assert flags & 0x8000, "not an answer"
    assert ancount == 1
    return query_id, socket.inet_ntoa(answer[-4:])


class DnsServer(asyncio.DatagramProtocol):
    """Answers every A query with an address derived from the name, and
    records the source address each query came from (the connector's flows)."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.sources: list[Any] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sources.append(addr)
        assert self.transport is not None
        if data.startswith(b"ECHO"):  # not DNS: send it back as it is
            self.transport.sendto(data, addr)
            return
        pos, labels = 12, []
        while data[pos]:
            labels.append(data[pos + 1 : pos + 1 + data[pos]].decode())
            pos += 1 + data[pos]
        question = data[12 : pos + 5]
        address = self.records.get(".".join(labels), "0.0.0.0")
        header = struct.pack("!HHHHHH", struct.unpack("!H", data[:2])[0], 0x8180, 1, 1, 0, 0)
        record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        self.transport.sendto(header + question + record, addr)


@contextlib.asynccontextmanager
async def dns_server(records: dict[str, str]) -> AsyncIterator[tuple[int, DnsServer]]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: DnsServer(records), local_addr=("127.0.0.1", 0)
    )
    try:
        yield int(transport.get_extra_info("sockname")[1]), server
    finally:
        transport.close()


class UdpApp(asyncio.DatagramProtocol):
    """An app socket: sends to the gateway port, collects answers."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def ask(self, data: bytes, timeout_s: float = 1.0, tries: int = 5) -> bytes:
        """Send and wait for one answer, resending (UDP may drop while a channel opens)."""
        for _ in range(tries):
            self.send(data)
            try:
                return await asyncio.wait_for(self.answers.get(), seconds(timeout_s))
            except TimeoutError:
                continue
        raise AssertionError(f"no UDP answer after {tries} tries")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def udp_app(port: int) -> UdpApp:
    _, app = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpApp, remote_addr=("127.0.0.1", port)
    )
    return app


def quiet_asyncssh() -> None:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
