"""The SSH core against Debian's OpenSSH, standard version line, both roles.

- our client -> ``sshd`` (started here on loopback with its own config and
  host keys in a temp dir; publickey auth with an ECDSA key of ours, signed
  through ``cryptography``): every kex x cipher, a ``direct-tcpip`` channel
  to a loopback echo server, re-keys started by sshd (``RekeyLimit``) and by
  us, and an Ed25519 host key;
- ``ssh -W`` -> our server (which accepts ``none``): every kex x cipher,
  bytes through a ``direct-tcpip`` channel echoed by the test handler;
- ``ssh -N -R`` -> our server, the direction the product uses (the server
  opens the channels): ``tcpip-forward`` answered with success (with the
  allocated port when port 0 is asked), then ``forwarded-tcpip`` channels
  from us that ssh connects to a loopback echo server. Every kex x cipher
  with 150 KB through a 32 KiB window (so our window adjusts carry the
  echo), a re-key we start mid-transfer of 3 MB (more than ssh's 2 MiB
  window, so its adjusts too), and open failures as ssh reports them: a
  forward whose local target is closed, and a port it never asked for.

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
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

from qanat.wire.ssh import OPEN_ADMINISTRATIVELY_PROHIBITED, OPEN_CONNECT_FAILED, EcdsaKey
from qanat.wire.ssh.codec import string, u32
from qanat.wire.ssh.kex import CIPHERS, KEX_ALGORITHMS
from support.servers import echo_server, free_port
from support.sshcore import FIRST_ALLOCATED_PORT, CoreProtocol, direct_tcpip, forwarded_tcpip
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
async def _core_server(**kwargs: object) -> AsyncIterator[tuple[int, list[CoreProtocol]]]:
    loop = asyncio.get_running_loop()
    key = EcdsaKey.generate()
    protos: list[CoreProtocol] = []
    options: dict[str, object] = {"echo": True, **kwargs}

    def factory() -> CoreProtocol:
        proto = CoreProtocol(
            client=False, version=b"SSH-2.0-qanat_test", host_key=key, **options
        )  # fmt: skip
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


# -- ssh -R against our server: the server opens the channels ------------------------

#: What ssh asks to bind for ``-R port:host:hostport`` (no bind address given).
RFWD_BIND = "localhost"


def _ssh_args(port: int, *options: str) -> list[str]:
    assert SSH is not None
    return [
        SSH, "-F", "/dev/null", "-p", str(port), "-N",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256", "-o", "ExitOnForwardFailure=yes",
        *options, "someone@127.0.0.1",
    ]  # fmt: skip


@asynccontextmanager
async def _ssh_reverse(
    *forwards: str, kex: str | None = None, cipher: str | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, CoreProtocol]]:
    """``ssh -N -R ...`` connected to a core server that accepts
    ``tcpip-forward``; yields once every forward was asked for and answered."""
    options = ["-o", "LogLevel=INFO"]  # INFO: ssh logs the allocated ports
    for spec in forwards:
        options += ["-R", spec]
    if kex is not None:
        options += ["-o", f"KexAlgorithms={kex}"]
    if cipher is not None:
        options += ["-o", f"Ciphers={cipher}"]
    async with _core_server(echo=False, tcpip_forward=True) as (port, protos):
        proc = await asyncio.create_subprocess_exec(
            *_ssh_args(port, *options),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:

            def asked() -> bool:
                assert proc.returncode is None, "ssh exited before its forwards were answered"
                return bool(protos) and len(protos[0].forwards) == len(forwards)

            await eventually(asked, "ssh's tcpip-forward requests", 15)
            yield proc, protos[0]
        finally:
            if proc.returncode is None:
                with suppress(ProcessLookupError):
                    proc.kill()
            await asyncio.wait_for(proc.wait(), scaled(10))


async def _disconnect_and_reap(proc: asyncio.subprocess.Process, proto: CoreProtocol) -> str:
    """Say goodbye as a server does; ssh must exit on it. Returns its stderr."""
    proto.conn.disconnect(11, "qanat test done")
    proto._flush()
    assert proc.stderr is not None
    err = (await asyncio.wait_for(proc.stderr.read(), scaled(10))).decode(errors="replace")
    await asyncio.wait_for(proc.wait(), scaled(10))
    # -N never ends by itself: a server's DISCONNECT ends it with 255, naming the reason.
    assert proc.returncode == 255, err
    assert "qanat test done" in err, err
    return err


async def _echo_through(
    proto: CoreProtocol, address: str, port: int, blob: bytes, *, rekey_at: int = -1
) -> int:
    """Open ``forwarded-tcpip`` for (address, port) with a 32 KiB window, send
    ``blob`` in 100 kB pieces (starting a re-key before piece ``rekey_at``)
    and EOF; check the echo, ssh's EOF and CLOSE. Returns the channel id."""
    extra = forwarded_tcpip(address, port, "127.0.0.1", 40001)
    chan = await asyncio.wait_for(
        proto.open(b"forwarded-tcpip", extra, window=32768, max_packet=16384), scaled(10)
    )
    kexes = proto.conn.kex_count
    step = 100_000
    last = (len(blob) - 1) // step
    for i, at in enumerate(range(0, len(blob), step)):
        if i == rekey_at:
            proto.conn.start_rekey()
            proto._flush()
        if i == last and rekey_at >= 0:  # the new keys carry the rest of the transfer
            await eventually(lambda: proto.conn.kex_count > kexes, "the re-key to finish", 15)
        proto.conn.send_data(chan, blob[at : at + step])
        await eventually(lambda: len(proto.data[chan]) >= at // 2, "echo to keep up", 15)  # noqa: B023
    proto.conn.send_eof(chan)
    await eventually(lambda: chan in proto.eofs, "ssh's EOF after the echo", 15)
    assert len(proto.data[chan]) == len(blob)
    assert bytes(proto.data[chan]) == blob
    await eventually(lambda: chan in proto.closed, "ssh's CLOSE", 10)
    if rekey_at >= 0:
        assert proto.conn.kex_count == kexes + 1
    return chan


@pytest.mark.parametrize(("kex", "cipher"), MATRIX)
async def test_openssh_remote_forward_through_core_server(kex, cipher):
    async with echo_server() as eport:
        fport = free_port()  # a label: ssh asks for it, nothing needs to listen on it
        async with _ssh_reverse(f"{fport}:127.0.0.1:{eport}", kex=kex, cipher=cipher) as (
            proc,
            proto,
        ):
            conn = proto.conn
            assert conn.kex_name == kex
            assert conn.cipher_names == (cipher, cipher)
            assert conn.strict
            assert conn.auth_user == "someone"
            assert proto.forwards == [(RFWD_BIND, fport)]
            assert [r for r in proto.requests if r[0] == "tcpip-forward"] == [
                ("tcpip-forward", string(RFWD_BIND.encode()) + u32(fport), True)
            ]
            blob = os.urandom(150_000)
            await _echo_through(proto, RFWD_BIND, fport, blob)
            await _disconnect_and_reap(proc, proto)
            assert proto.opened == []  # ssh -R opens nothing towards us


async def test_openssh_remote_forward_survives_a_rekey_we_start_mid_transfer():
    async with echo_server() as eport, _ssh_reverse(f"0:127.0.0.1:{eport}") as (proc, proto):
        assert proto.forwards == [(RFWD_BIND, FIRST_ALLOCATED_PORT)]
        blob = os.urandom(3_000_000)
        await _echo_through(proto, RFWD_BIND, FIRST_ALLOCATED_PORT, blob, rekey_at=12)
        assert proto.conn.kex_count == 2
        err = await _disconnect_and_reap(proc, proto)
        assert f"Allocated port {FIRST_ALLOCATED_PORT} for remote forward" in err, err


async def test_openssh_refuses_forwarded_opens_it_cannot_connect_or_did_not_ask_for():
    closed = free_port()  # nothing listens here: ssh's connect is refused
    async with (
        echo_server() as eport,
        _ssh_reverse(f"0:127.0.0.1:{eport}", f"0:127.0.0.1:{closed}") as (proc, proto),
    ):
        good, bad = FIRST_ALLOCATED_PORT, FIRST_ALLOCATED_PORT + 1
        assert sorted(proto.forwards) == [(RFWD_BIND, good), (RFWD_BIND, bad)]
        await _echo_through(proto, RFWD_BIND, good, b"first")
        with pytest.raises(ConnectionRefusedError) as refused:
            await asyncio.wait_for(
                proto.open(b"forwarded-tcpip", forwarded_tcpip(RFWD_BIND, bad)), scaled(10)
            )
        assert f"({OPEN_CONNECT_FAILED})" in str(refused.value)
        assert "Connection refused" in str(refused.value)
        with pytest.raises(ConnectionRefusedError) as unknown:
            await asyncio.wait_for(
                proto.open(b"forwarded-tcpip", forwarded_tcpip(RFWD_BIND, bad + 1)), scaled(10)
            )
        assert f"({OPEN_ADMINISTRATIVELY_PROHIBITED})" in str(unknown.value)
        # The refusals cost the connection nothing: the good forward still works.
        await _echo_through(proto, RFWD_BIND, good, os.urandom(50_000))
        assert proto.conn.channel_ids() == []
        err = await _disconnect_and_reap(proc, proto)
        assert f"Allocated port {good} for remote forward to 127.0.0.1:{eport}" in err, err
        assert f"Allocated port {bad} for remote forward to 127.0.0.1:{closed}" in err, err
