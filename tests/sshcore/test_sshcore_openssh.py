"""The SSH core against Debian's OpenSSH, standard version line, both roles.

- our client -> ``sshd`` (started here on loopback with its own config and
  host keys in a temp dir; publickey auth with an ECDSA key of ours, signed
  through ``cryptography``): every kex x cipher, a ``direct-tcpip`` channel
  to a loopback echo server, re-keys started by sshd (``RekeyLimit``) and by
  us, and an Ed25519 host key;
- ``ssh -W`` -> our server (which accepts ``none``): every kex x cipher,
  bytes through a ``direct-tcpip`` channel echoed by the test handler.

Skipped, with the reason, without OpenSSH or not as root (sshd needs it).
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from qanat.wire.ssh import EcdsaKey
from qanat.wire.ssh.kex import CIPHERS, KEX_ALGORITHMS
from support.servers import echo_server, free_port
from support.sshcore import CoreProtocol, direct_tcpip
from support.timing import eventually, scaled

SSHD = Path("/usr/sbin/sshd")
SSH = shutil.which("ssh")
KEYGEN = shutil.which("ssh-keygen")
MATRIX = [(k, c) for k in KEX_ALGORITHMS for c in CIPHERS]

pytestmark = [
    pytest.mark.skipif(
        not SSHD.exists() or SSH is None or KEYGEN is None,
        reason="needs openssh-server and openssh-client (scripts/system-deps.sh)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd runs as root here"),
]

CLIENT_KEY = EcdsaKey.generate()


def _authorized_line(key: EcdsaKey) -> str:
    return f"{key.algorithm} {base64.b64encode(key.public_blob).decode()} qanat-test\n"


@pytest.fixture(scope="module", params=["ecdsa", "ed25519"])
def sshd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    d = tmp_path_factory.mktemp(f"sshd-{request.param}")
    d.chmod(0o700)
    host_key = d / f"host_{request.param}"
    subprocess.run(
        [KEYGEN, "-q", "-t", request.param, "-N", "", "-f", str(host_key)], check=True
    )  # fmt: skip
    (d / "authorized_keys").write_text(_authorized_line(CLIENT_KEY))
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "AllowTcpForwarding local",
                "RekeyLimit 300K",
                "UseDNS no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        import socket
        import time

        deadline = time.monotonic() + scaled(10)
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "sshd exited"
                assert time.monotonic() < deadline, "sshd did not listen"
                time.sleep(0.02)  # polling for the listener, bounded above
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _client(port: int, **kwargs: object) -> tuple[asyncio.Transport, CoreProtocol]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(
        lambda: CoreProtocol(
            client=True,
            version=b"SSH-2.0-qanat_test",
            username=getpass.getuser(),
            client_key=CLIENT_KEY,
            **kwargs,
        ),
        "127.0.0.1",
        port,
    )
    await asyncio.wait_for(proto.ready, scaled(15))
    return transport, proto


@pytest.mark.parametrize(("kex", "cipher"), MATRIX)
async def test_core_client_through_sshd_direct_tcpip(sshd, kex, cipher):
    async with echo_server() as eport:
        transport, proto = await _client(sshd, kex_algorithms=(kex,), ciphers=(cipher,))
        try:
            assert proto.conn.kex_name == kex
            assert proto.conn.cipher_names == (cipher, cipher)
            assert proto.conn.strict  # OpenSSH 9.2 offers strict kex
            chan = await proto.open(b"direct-tcpip", direct_tcpip("127.0.0.1", eport))
            blob = os.urandom(200_000)
            proto.conn.send_data(chan, blob)
            await eventually(lambda: len(proto.data[chan]) >= len(blob), "echo", 15)
            assert bytes(proto.data[chan]) == blob
            proto.conn.send_eof(chan)
            await eventually(lambda: chan in proto.closed or chan in proto.eofs, "EOF", 10)
        finally:
            transport.close()


async def test_rekeys_by_sshd_and_by_us_keep_the_channel(sshd):
    async with echo_server() as eport:
        transport, proto = await _client(sshd)
        try:
            chan = await proto.open(b"direct-tcpip", direct_tcpip("127.0.0.1", eport))
            sent = bytearray()
            for i in range(8):  # 2.4 MB: sshd re-keys every 300 kB
                chunk = os.urandom(300_000)
                sent += chunk
                proto.conn.send_data(chan, chunk)
                if i == 4:
                    proto.conn.start_rekey()
                await eventually(lambda: len(proto.data[chan]) >= len(sent), "echo", 15)  # noqa: B023
            assert bytes(proto.data[chan]) == bytes(sent)
            assert proto.conn.kex_count >= 4
            proto.conn.send_eof(chan)
            await eventually(lambda: chan in proto.closed or chan in proto.eofs, "EOF", 10)
        finally:
            transport.close()


# -- ssh -W against our server ---------------------------------------------------


@asynccontextmanager
async def _core_server() -> AsyncIterator[tuple[int, list[CoreProtocol]]]:
    loop = asyncio.get_running_loop()
    key = EcdsaKey.generate()
    protos: list[CoreProtocol] = []

    def factory() -> CoreProtocol:
        proto = CoreProtocol(client=False, version=b"SSH-2.0-qanat_test", host_key=key, echo=True)
        protos.append(proto)
        return proto

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], protos
    finally:
        server.close()
        for proto in protos:
            if proto.transport is not None:
                proto.transport.abort()
        await server.wait_closed()


@pytest.mark.parametrize(("kex", "cipher"), MATRIX)
async def test_openssh_client_through_core_server(kex, cipher):
    async with _core_server() as (port, protos):
        payload = os.urandom(150_000)
        proc = await asyncio.create_subprocess_exec(
            SSH, "-F", "/dev/null", "-p", str(port), "-W", "10.1.2.3:80",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"KexAlgorithms={kex}", "-o", f"Ciphers={cipher}",
            "-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256", "-o", "LogLevel=ERROR",
            "someone@127.0.0.1",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(payload), scaled(30))
        assert out == payload, err.decode()
        assert proc.returncode == 0, err.decode()
        conn = protos[0].conn
        assert conn.kex_name == kex
        assert conn.cipher_names == (cipher, cipher)
        assert conn.strict
        assert conn.auth_user == "someone"
        assert protos[0].opened[0][1] == b"direct-tcpip"
