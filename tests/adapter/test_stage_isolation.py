"""Stage isolation on loopback: a gateway and connectors in this process.

Linux routes all of 127.0.0.0/8 to the loopback interface, so stages bound on
127.0.0.2 and 127.0.0.3 are two app networks without root, and an app can
pick its source address (127.0.0.3, 127.0.0.4, ...) to be inside or outside a
stage allowlist. 192.0.2.1 (TEST-NET-1) stands for an address the gateway
host does not have: only bind() is tried on it, nothing is sent.
The network-namespace version of these checks is tests/e2e/netns/.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from qanat.connector.egress import Egress
from qanat.connector.options import ConnectOptions
from qanat.connector.session import Session, Stats
from qanat.errors import RemotesRejected
from qanat.gateway.server import Gateway
from qanat.gateway.settings import GatewaySettings
from qanat.gateway.stages import MemoryStageSource, StageConfig
from qanat.wire.handshake import new_client_id
from qanat.wire.remotes import decode_remotes
from qanat.wire.tokens import hash_token, new_address_id, new_token
from support.servers import free_port as _free_port
from support.tlscerts import make_tls

DEADLINE_S = 20.0


def run_uvloop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop, like the qanat processes, with the deadline."""
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main, DEADLINE_S))
    finally:
        loop.close()


class Bed:
    """A gateway on 127.0.0.1:0 with stages added by the test, and its connectors."""

    def __init__(self, gateway: Gateway, source: MemoryStageSource) -> None:
        self.gateway = gateway
        self.source = source
        self.tokens: dict[str, str] = {}
        self.stages: dict[str, StageConfig] = {}
        self.sessions: list[Session] = []

    def add_stage(self, key: str, bind: str, allow: tuple[str, ...]) -> StageConfig:
        token = new_token()
        stage = StageConfig(
            key=key,
            address_id=new_address_id(),
            bind_host=bind,
            token_hashes=(hash_token(token),),
            allow_cidrs=allow,
        )
        self.tokens[key] = token
        self.stages[key] = stage
        self.source.put(stage)
        return stage

    async def connect(self, key: str, *remotes: str) -> Session:
        """A connector session of stage ``key``; raises what the gateway refused."""
        host, port = self.gateway.address
        options = ConnectOptions(
            address=f"http://{host}:{port}/{self.stages[key].address_id}",
            remotes=tuple(decode_remotes(list(remotes))),
            headers=(("token", self.tokens[key]),),
            keepalive_s=0,
            connect_timeout_s=5.0,
            dial_timeout_s=2.0,
        )
        client_id = new_client_id()
        session = Session(options, client_id, Stats(), Egress(options))
        self.sessions.append(session)
        await session.connect()
        return session


@contextlib.asynccontextmanager
async def running_bed(tmp_path: Path) -> AsyncIterator[Bed]:
    source = MemoryStageSource()
    gateway = Gateway(GatewaySettings(data_dir=tmp_path, listen_port=0, keepalive_s=0), source)
    await gateway.start()
    bed = Bed(gateway, source)
    try:
        yield bed
    finally:
        for session in bed.sessions:
            await session.close()
        await gateway.close(drain_s=2.0)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        data = await reader.read(1024)
        writer.write(b"echo:" + data)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def private_endpoint(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] = _echo,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def ask(host: str, port: int, source: str | None = None, payload: bytes = b"hi") -> bytes:
    """One app connection: send, read the answer (b"" when closed or refused)."""
    try:
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(source, 0) if source else None
        )
    except ConnectionRefusedError:
        return b""
    try:
        writer.write(payload)
        async with asyncio.timeout(5.0):
            return await reader.read(1024)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def test_bind_address_is_the_gateways_choice(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_bed(tmp_path) as bed, private_endpoint() as target:
            bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.0/8",))
            port = _free_port("127.0.0.2")
            # The connector asks for 127.0.0.9 (chisel's LocalHost); it is ignored.
            await bed.connect("acme/dev", f"R:127.0.0.9:{port}:127.0.0.1:{target}")
            assert list(bed.gateway.ports.open) == [("127.0.0.2", port, "tcp")]
            assert await ask("127.0.0.2", port) == b"echo:hi"
            assert await ask("127.0.0.9", port) == b""

    asyncio.run(asyncio.wait_for(main(), DEADLINE_S))


def test_port_reserved_by_another_stage_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_bed(tmp_path) as bed, private_endpoint() as target:
            bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.0/8",))
            bed.add_stage("acme/test", "127.0.0.2", ("127.0.0.0/8",))
            bed.add_stage("acme/prod", "127.0.0.3", ("127.0.0.0/8",))
            port = _free_port("127.0.0.2")
            await bed.connect("acme/dev", f"R:{port}:127.0.0.1:{target}")
            with pytest.raises(RemotesRejected) as refused:
                await bed.connect("acme/test", f"R:{port}:127.0.0.1:{target}")
            assert f"port {port} is reserved by another stage on 127.0.0.2" in str(refused.value)
            # Another stage on its own address may use the same port number.
            await bed.connect("acme/prod", f"R:{port}:127.0.0.1:{target}")
            assert await ask("127.0.0.2", port, payload=b"dev") == b"echo:dev"
            assert await ask("127.0.0.3", port, payload=b"prod") == b"echo:prod"

    asyncio.run(asyncio.wait_for(main(), DEADLINE_S))


def _tagged(tag: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(tag + await reader.read(1024))
        await writer.drain()
        writer.close()

    return handler


def test_overlapping_stage_connecting_first_gets_nothing(tmp_path: Path) -> None:
    """The attack: stage "evil" shares acme's address and connects first with
    acme's port. The stage configured first owns the port, whoever connects
    first: evil is refused, acme is not, and acme's app traffic reaches acme."""

    async def main() -> None:
        async with (
            running_bed(tmp_path) as bed,
            private_endpoint(_tagged(b"acme:")) as acme_target,
            private_endpoint(_tagged(b"evil:")) as evil_target,
        ):
            bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.0/8",))
            bed.add_stage("evil/dev", "127.0.0.2", ("127.0.0.0/8",))
            port = _free_port("127.0.0.2")
            with pytest.raises(RemotesRejected, match="reserved by another stage"):
                await bed.connect("evil/dev", f"R:{port}:127.0.0.1:{evil_target}")
            await bed.connect("acme/dev", f"R:{port}:127.0.0.1:{acme_target}")
            assert await ask("127.0.0.2", port, payload=b"AUTH PLAIN") == b"acme:AUTH PLAIN"
            # The wildcard overlaps every address: refused as well.
            bed.add_stage("evil/any", "0.0.0.0", ("127.0.0.0/8",))
            with pytest.raises(RemotesRejected, match="reserved by another stage"):
                await bed.connect("evil/any", f"R:{port}:127.0.0.1:{evil_target}")

    asyncio.run(asyncio.wait_for(main(), DEADLINE_S))


def test_unbindable_stage_address_is_refused_other_stages_unaffected(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_bed(tmp_path) as bed, private_endpoint() as target:
            bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.0/8",))
            bed.add_stage("acme/broken", "192.0.2.1", ("192.0.2.0/24",))
            port = _free_port("127.0.0.2")
            with pytest.raises(RemotesRejected) as refused:
                await bed.connect("acme/broken", f"R:{port}:127.0.0.1:{target}")
            text = str(refused.value)
            assert "stage acme/broken: bind address 192.0.2.1 is not an address" in text
            assert not bed.gateway.ports.open
            await bed.connect("acme/dev", f"R:{port}:127.0.0.1:{target}")
            assert await ask("127.0.0.2", port) == b"echo:hi"

    asyncio.run(asyncio.wait_for(main(), DEADLINE_S))


def test_outside_allowlist_is_closed_counted_and_a_flood_stays_cheap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flood_count = 2000

    async def main() -> tuple[list[bytes], list[float]]:
        async with running_bed(tmp_path) as bed, private_endpoint() as target:
            bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.3/32",))
            port = _free_port("127.0.0.2")
            await bed.connect("acme/dev", f"R:{port}:127.0.0.1:{target}")
            assert await ask("127.0.0.2", port, source="127.0.0.3") == b"echo:hi"
            assert await ask("127.0.0.2", port, source="127.0.0.4") == b""

            answers: list[bytes] = []
            latencies: list[float] = []
            limit = asyncio.Semaphore(64)

            async def intruder() -> None:
                async with limit:
                    answers.append(await ask("127.0.0.2", port, source="127.0.0.4"))

            async def app() -> None:
                loop = asyncio.get_running_loop()
                for _ in range(20):
                    started = loop.time()
                    assert await ask("127.0.0.2", port, source="127.0.0.3") == b"echo:hi"
                    latencies.append(loop.time() - started)
                    await asyncio.sleep(0.01)

            await asyncio.gather(app(), *(intruder() for _ in range(flood_count)))
            endpoint = bed.gateway.ports.open[("127.0.0.2", port, "tcp")]
            assert endpoint.refused_sources == flood_count + 1
            assert endpoint.connections_total == 21
            return answers, latencies

    with caplog.at_level(logging.WARNING):
        answers, latencies = asyncio.run(asyncio.wait_for(main(), DEADLINE_S * 2))
    assert answers == [b""] * flood_count  # never the endpoint's answer
    assert max(latencies) < 1.0
    refusal_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusal_lines) <= 6, [r.getMessage() for r in refusal_lines]
    assert "from 127.0.0.4" in refusal_lines[0].getMessage()


def test_tls_between_app_and_endpoint_passes_through_untouched(tmp_path: Path) -> None:
    files = make_tls(tmp_path, "secure-gateway")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    # Only the name the app uses is checked: the endpoint certificate is for
    # secure-gateway, whatever address that name resolves to.
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(files.cert.read_text())).hexdigest()

    async def https_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            line = await reader.readline()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n" if line else b"")
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with running_bed(tmp_path) as bed, private_endpoint(https_like, server_ctx) as tgt:
            bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.0/8",))
            port = _free_port("127.0.0.2")
            await bed.connect("acme/dev", f"R:{port}:127.0.0.1:{tgt}")
            reader, writer = await asyncio.open_connection(
                "127.0.0.2", port, ssl=client_ctx, server_hostname="secure-gateway"
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: secure-gateway\r\n\r\n")
            answer = await reader.read(1024)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            assert answer.endswith(b"ok\n")
            assert hashlib.sha256(der).hexdigest() == expected

    asyncio.run(asyncio.wait_for(main(), DEADLINE_S))


def test_deactivation_closes_the_stage_listeners_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_bed(tmp_path) as bed, private_endpoint() as target:
            dev = bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.0/8",))
            bed.add_stage("acme/prod", "127.0.0.3", ("127.0.0.0/8",))
            port = _free_port("127.0.0.2")
            await bed.connect("acme/dev", f"R:{port}:127.0.0.1:{target}")
            await bed.connect("acme/prod", f"R:{port}:127.0.0.1:{target}")
            bed.source.update(dev.address_id, active=False)
            assert await ask("127.0.0.2", port) == b""
            assert await ask("127.0.0.3", port) == b"echo:hi"

    asyncio.run(asyncio.wait_for(main(), DEADLINE_S))


def banner_scenario(tmp_path: Path) -> None:
    """40 app connections to an endpoint that speaks first, on uvloop."""

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 private-smtp ready\r\n")
        with contextlib.suppress(ConnectionError):
            line = await reader.readline()
            writer.write(b"250 " + line)
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with running_bed(tmp_path) as bed, private_endpoint(banner) as target:
            bed.add_stage("acme/dev", "127.0.0.2", ("127.0.0.0/8",))
            port = _free_port("127.0.0.2")
            await bed.connect("acme/dev", f"R:{port}:127.0.0.1:{target}")
            for _ in range(40):
                reader, writer = await asyncio.open_connection("127.0.0.2", port)
                try:
                    async with asyncio.timeout(3.0):
                        assert await reader.readline() == b"220 private-smtp ready\r\n"
                        writer.write(b"HELO app\r\n")
                        assert await reader.readline() == b"250 HELO app\r\n"
                finally:
                    writer.close()

    run_uvloop(main())


def test_server_first_endpoint_banner_reaches_the_app(tmp_path: Path) -> None:
    # An SMTP-like endpoint speaks first; its banner can reach the gateway in
    # the same read as the channel-open confirmation, before the app's TCP
    # end is attached to the channel. It must wait for it, not be lost. The
    # race shows on uvloop (what qanat runs on); the scenario runs in a child
    # process so that a regression fails in bounded time instead of hanging.
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "sys.path.insert(0, str(Path(sys.argv[1]).parent)); "
        "import test_stage_isolation as t; t.banner_scenario(Path(sys.argv[2]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
