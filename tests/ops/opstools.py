"""Shared helpers of the operability tests: a gateway, a connector, endpoints, HTTP.

Everything runs on loopback with port 0; every wait has a deadline scaled by
QANAT_TEST_TIMEOUT_FACTOR (for slow machines).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qanat.connector.options import ConnectOptions
from qanat.connector.runner import Connector
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import MemoryStageSource, StageConfig
from qanat.wire.remotes import decode_remotes
from qanat.wire.tokens import hash_token, new_address_id, new_token
from support import tunnels
from support.servers import free_port
from support.timing import eventually, scaled
from support.tlscerts import TlsFiles, make_tls  # noqa: F401 - re-exported for tests/ops


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    await eventually(predicate, what, timeout_s)


async def port_open(port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"port {port} not open within {scaled(timeout_s):g}s"
                ) from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return


@dataclass
class GatewayEnv(tunnels.GatewayEnv):
    """The shared in-process gateway env, plus connector options for ops tests."""

    def options(self, *remotes: str, token: str | None = None, **more: Any) -> ConnectOptions:
        headers = () if token == "" else (("token", self.token if token is None else token),)
        return ConnectOptions(
            address=more.pop("address", self.address),
            remotes=tuple(decode_remotes(remotes)),
            headers=headers,
            **more,
        )


@contextlib.asynccontextmanager
async def gateway_env(
    tmp: Path, *, stage: dict[str, Any] | None = None, ssl_context: Any = None, **settings: Any
) -> AsyncIterator[GatewayEnv]:
    token = new_token()
    config = StageConfig(
        key="acme/Development",
        address_id=new_address_id(),
        token_hashes=(hash_token(token),),
        **(stage or {}),
    )
    source = MemoryStageSource()
    source.put(config)
    gateway = Gateway(
        GatewaySettings(data_dir=tmp, listen_port=0, **settings), source, ssl_context=ssl_context
    )
    await gateway.start()
    try:
        yield GatewayEnv(gateway, source, config, token)
    finally:
        await gateway.close(drain_s=2.0)


@dataclass
class RunningConnector:
    connector: Connector
    task: asyncio.Task[int]
    port: int

    async def stop(self) -> None:
        self.connector.stop_event.set()
        async with asyncio.timeout(scaled(5.0)):
            await self.task


@contextlib.asynccontextmanager
async def connector(
    options: ConnectOptions, serves_port: int | None
) -> AsyncIterator[RunningConnector]:
    """Run a connector; when ``serves_port`` is given, wait until the gateway listens on it."""
    conn = Connector(options)
    task = asyncio.get_running_loop().create_task(conn.run(), name="test-connector")
    running = RunningConnector(conn, task, serves_port or 0)
    try:
        if serves_port:
            await port_open(serves_port)
        yield running
    finally:
        await running.stop()


@dataclass
class Endpoint:
    server: asyncio.Server
    requests: list[bytes] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def http_endpoint(body: bytes = b"hello from the private side\n") -> AsyncIterator[Endpoint]:
    """A tiny HTTP/1.1 server: every request gets 200 and ``body``, then close."""
    endpoint: Endpoint

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            endpoint.requests.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    endpoint = Endpoint(server)
    try:
        yield endpoint
    finally:
        server.close()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A loopback server running ``handler`` per connection; yields its port."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def http_request(
    port: int, path: str, method: str = "GET", headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port; (status, headers, body)."""
    async with asyncio.timeout(scaled(5.0)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
        writer.write(f"{head}Connection: close\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status, parsed, body


# -- TLS material ----------------------------------------------------------------


# -- a loop in a thread, for tests that call the (blocking) command line ----------------


@contextlib.contextmanager
def background_loop() -> Any:
    import threading

    import uvloop

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(scaled(5.0))
        loop.close()


def call(loop: asyncio.AbstractEventLoop, coro: Any, timeout_s: float = 10.0) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(scaled(timeout_s))


# -- a TCP relay that can stop forwarding (a peer that went silent) ---------------------


@dataclass
class Relay:
    port: int
    frozen: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def relay(target_port: int) -> AsyncIterator[Relay]:
    """Forward 127.0.0.1:<port> to target_port until ``frozen`` is set; then drop bytes."""
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[None]] = set()
    state: Relay

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not state.frozen.is_set():
                    writer.write(data)
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        writers.extend((writer, up_writer))
        for task in (
            asyncio.ensure_future(pump(reader, up_writer)),
            asyncio.ensure_future(pump(up_reader, writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state = Relay(int(server.sockets[0].getsockname()[1]))
    try:
        yield state
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=scaled(2.0))


async def http_through(port: int, path: str = "/") -> tuple[int, int]:
    """One GET through secure-gateway:<port>; (bytes sent, bytes received)."""
    request = f"GET {path} HTTP/1.1\r\nHost: secure-gateway\r\nConnection: close\r\n\r\n".encode()
    async with asyncio.timeout(scaled(5.0)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:80]
    return len(request), len(answer)
