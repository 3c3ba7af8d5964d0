"""The SSH core against asyncssh, an implementation we did not write, in both roles.

Every key exchange and cipher of the core, each way; channels with data
both ways and half-close; global requests; re-keying started by either side.
"""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from qanat.wire.ssh import EcdsaKey
from qanat.wire.ssh.kex import CIPHERS, KEX_ALGORITHMS
from support.sshcore import CoreProtocol, direct_tcpip
from support.timing import eventually, scaled

MATRIX = [(k, c) for k in KEX_ALGORITHMS for c in CIPHERS]


class _EchoSession(asyncssh.SSHTCPSession[bytes]):
    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: object) -> None:
        self._chan.write(data)

    def eof_received(self) -> bool:
        self._chan.write_eof()
        return True


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):  # type: ignore[no-untyped-def]
        if dest_port == 9:
            raise asyncssh.ChannelOpenError(2, "port 9 is refused")
        return _EchoSession()


async def _asyncssh_server(
    host_key_alg: str, **options: object
) -> tuple[asyncssh.SSHAcceptor, int]:
    key = asyncssh.generate_private_key(host_key_alg)
    acceptor = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[key], server_factory=_Server, **options
    )
    return acceptor, acceptor.sockets[0].getsockname()[1]


async def _core_client(port: int, **kwargs: object) -> tuple[asyncio.Transport, CoreProtocol]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(
        lambda: CoreProtocol(
            client=True, version=b"SSH-2.0-qanat_test", username="tester", **kwargs
        ),
        "127.0.0.1",
        port,
    )
    await asyncio.wait_for(proto.ready, scaled(10))
    return transport, proto


@pytest.mark.parametrize(("kex", "cipher"), MATRIX)
async def test_core_client_against_asyncssh_server(kex, cipher):
    acceptor, port = await _asyncssh_server(
        "ecdsa-sha2-nistp256", kex_algs=[kex], encryption_algs=[cipher]
    )
    try:
        transport, proto = await _core_client(port)
        assert proto.conn.kex_name == kex
        assert proto.conn.cipher_names == (cipher, cipher)
        chan = await proto.open(b"direct-tcpip", direct_tcpip("127.0.0.1", 7))
        blob = bytes(range(256)) * 1000  # several windows' worth of packets
        proto.conn.send_data(chan, blob)
        proto.conn.send_eof(chan)
        await eventually(lambda: chan in proto.eofs, "echo EOF", 10)
        assert bytes(proto.data[chan]) == blob
        proto.conn.close_channel(chan)
        await eventually(lambda: chan in proto.closed, "channel close", 10)
        # asyncssh refuses global requests it does not know, with a failure.
        assert await proto.request("ping") == (False, b"")
        transport.close()
    finally:
        acceptor.close()
        await acceptor.wait_closed()


async def test_core_client_verifies_an_ed25519_host_key_and_reads_refusals():
    acceptor, port = await _asyncssh_server("ssh-ed25519")
    try:
        transport, proto = await _core_client(port)
        assert proto.conn.peer_host_key.startswith(b"\x00\x00\x00\x0bssh-ed25519")
        with pytest.raises(ConnectionRefusedError, match="port 9 is refused"):
            await proto.open(b"direct-tcpip", direct_tcpip("127.0.0.1", 9))
        transport.close()
    finally:
        acceptor.close()
        await acceptor.wait_closed()


async def test_rekey_started_by_either_side_keeps_the_channel():
    acceptor, port = await _asyncssh_server("ecdsa-sha2-nistp256", rekey_bytes=200_000)
    transport = None
    try:
        transport, proto = await _core_client(port)
        chan = await proto.open(b"direct-tcpip", direct_tcpip("127.0.0.1", 7))
        total = bytearray()
        for i in range(6):  # asyncssh re-keys after every 200 kB
            chunk = bytes([i]) * 100_000
            total += chunk
            proto.conn.send_data(chan, chunk)
            await eventually(lambda: len(proto.data[chan]) == len(total), "echo", 10)  # noqa: B023
        assert proto.conn.kex_count >= 3
        before = proto.conn.kex_count
        proto.conn.start_rekey()  # ours, with data sent while it runs
        proto.conn.send_data(chan, b"during our re-key")
        total += b"during our re-key"
        await eventually(lambda: len(proto.data[chan]) == len(total), "echo", 10)
        assert bytes(proto.data[chan]) == bytes(total)
        assert proto.conn.kex_count == before + 1
    finally:
        if transport is not None:
            transport.close()
        acceptor.close()
        await acceptor.wait_closed()


# -- the core as server, asyncssh as client ------------------------------------


async def _core_server(**kwargs: object) -> tuple[asyncio.Server, int, list[CoreProtocol]]:
    loop = asyncio.get_running_loop()
    key = EcdsaKey.generate()
    protos: list[CoreProtocol] = []

    def factory() -> CoreProtocol:
        proto = CoreProtocol(
            client=False, version=b"SSH-2.0-qanat_test", host_key=key, echo=True, **kwargs
        )
        protos.append(proto)
        return proto

    server = await loop.create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], protos


@pytest.mark.parametrize(("kex", "cipher"), MATRIX)
@pytest.mark.parametrize("username", ["", "someone"])
async def test_asyncssh_client_against_core_server(kex, cipher, username):
    server, port, protos = await _core_server()
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username=username or "x", known_hosts=None, config=None,
            kex_algs=[kex], encryption_algs=[cipher], preferred_auth="none,password", password="",
        ) as conn:  # fmt: skip
            reader, writer = await conn.open_connection("10.0.0.1", 80)
            writer.write(b"hello through the core")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), scaled(10)) == b"hello through the core"
            assert protos[0].opened[0][1] == b"direct-tcpip"
            assert protos[0].conn.auth_user == (username or "x")
            # A global request the core's handler answers.
            conn.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_asyncssh_client_rekeys_against_core_server():
    server, port, protos = await _core_server()
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username="x", known_hosts=None, config=None, rekey_bytes=100_000
        ) as conn:
            reader, writer = await conn.open_connection("10.0.0.1", 80)
            sent = bytes(range(256)) * 2000
            writer.write(sent)
            writer.write_eof()
            got = await asyncio.wait_for(reader.read(), scaled(20))
            assert got == sent
            assert protos[0].conn.kex_count >= 3
            conn.close()
    finally:
        server.close()
        await server.wait_closed()
