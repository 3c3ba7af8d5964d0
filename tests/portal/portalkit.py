"""Helpers of the portal tests: an in-process ``qanat up``, connectors, an endpoint.

Everything runs in the test's own event loop on loopback with port 0:
:class:`Up` (portal + gateway + SQLite), real connectors (the production
:class:`~qanat.connector.runner.Connector`, minus signal handlers), and a
small TCP endpoint that answers each line with ``echo: <line>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from qanat.connector.options import ConnectOptions
from qanat.connector.runner import Connector
from qanat.portal import PasswordHasher
from qanat.up import Up, UpConfig
from qanat.wire.remotes import decode_remote
from support.servers import free_port  # noqa: F401 - for the portal tests
from support.timing import TIMEOUT_FACTOR, until

#: Multiply every deadline by this on slow machines (QANAT_TEST_TIMEOUT_FACTOR=3).
SLOW = TIMEOUT_FACTOR
CHEAP_HASHER = PasswordHasher(log2_n=8)


def up_config(data_dir: Path, **overrides: Any) -> UpConfig:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "keepalive_s": 0.5,
        "report_refresh_s": 0.3,
        "hasher": CHEAP_HASHER,
        "node": "test-node",
    }
    values.update(overrides)
    return UpConfig(**values)


@contextlib.asynccontextmanager
async def running_up(data_dir: Path, **overrides: Any) -> AsyncIterator[Up]:
    up = Up(up_config(data_dir, **overrides))
    try:
        await up.start()
        yield up
    finally:
        await up.close()


class TestConnector(Connector):
    """The real connector, without process-wide signal handlers."""

    __test__ = False

    def _install_signals(self) -> None:
        return None


class LogTap(logging.Handler):
    """Collects the messages of one logger (the connector's refusals)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> LogTap:
        self.logger.addHandler(self)
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


@contextlib.asynccontextmanager
async def connector(
    address: str,
    token: str,
    *remotes: str,
    retry_s: float = 0.3,
    connector_id: str = "",
    tls_ca: str = "",
    declarations: tuple[Any, ...] = (),
) -> AsyncIterator[TestConnector]:
    extra: dict[str, Any] = {"connector_id": connector_id} if connector_id else {}
    if declarations:
        extra["declarations"] = declarations
    if tls_ca:
        extra["tls_ca"] = tls_ca
    options = ConnectOptions(
        address=address,
        remotes=tuple(decode_remote(r) for r in remotes),
        headers=(("token", token),),
        keepalive_s=0.5,
        keepalive_timeout_s=2.0,
        max_retry_interval_s=retry_s,
        connect_timeout_s=5.0,
        **extra,
    )
    conn = TestConnector(options)
    task = asyncio.create_task(conn.run(), name="test-connector")
    try:
        yield conn
    finally:
        conn.stop_event.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5 * SLOW)


@contextlib.asynccontextmanager
async def echo_endpoint() -> AsyncIterator[int]:
    """A private endpoint: answers each line with ``echo: <line>``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(b"echo: " + line)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def app_request(port: int, text: str = "hello", timeout_s: float = 3.0) -> str:
    """An app's round trip through ``secure-gateway:<port>``."""
    async with asyncio.timeout(timeout_s * SLOW):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(text.encode() + b"\n")
            await writer.drain()
            return (await reader.readline()).decode().strip()
        finally:
            writer.close()


async def port_refuses(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def eventually(
    check: Callable[[], Awaitable[bool]], deadline_s: float, what: str, step_s: float = 0.05
) -> float:
    """Wait until ``check()`` is true; return the seconds it took, or fail."""
    return await until(check, deadline_s, what, step_s)


class Api:
    """A JSON client of the portal API with a bearer key."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None) -> None:
        self.session = session
        self.base = base
        self.key = key

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        sent.update(headers or {})
        kwargs: dict[str, Any] = {"headers": sent}
        if body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + "/api/v1" + path, **kwargs) as r:
            raw = await r.read()
            doc = None
            if raw:
                import json

                doc = json.loads(raw)
            return r.status, doc

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = await self.call(method, path, body)
        assert status < 300, f"{method} {path}: {status} {doc}"
        return doc


def local_key(up: Up) -> str:
    import json

    return str(json.loads(up.local_admin_path.read_text())["api_key"])


@contextlib.asynccontextmanager
async def api_client(up: Up, key: str | None = None) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, up.url, key if key is not None else local_key(up))


async def tunnel_probe(up_url: str, address_id: str, token: str) -> tuple[int, str]:
    """One raw upgrade attempt, as a connector makes it: the status and body."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "chisel-v3",
        "token": token,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{up_url}/{address_id}", headers=headers) as r,
    ):
        return r.status, (await r.text()).strip()
