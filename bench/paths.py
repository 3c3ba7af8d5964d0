"""The paths under test, each set up from scratch and torn down after.

A :class:`Path` tells the load generator where to connect (the app-side
ports for the echo and the sink) and which processes are the server side
(gateway) and the client side (connector) of the tunnel, for the memory
figures.

- ``direct``: the endpoints' own ports; no tunnel.
- ``ssh``: Debian's OpenSSH. The benchmark starts its own ``sshd`` on a
  free loopback port with its own config, host key and authorized_keys, then
  ``ssh -N -R`` with a generated key, forwarding two app ports (echo, sink)
  over one SSH connection. Cipher ``aes128-gcm@openssh.com``, the one a
  chisel-v3 client prefers, so the comparison with qanat is like for like.
  OpenSSH turns Nagle off (TCP_NODELAY) on its connection only for an
  interactive session, i.e. one with a pty; with plain ``ssh -N -R`` every
  channel open waits for a delayed ACK and connect + first round trip takes
  ~43 ms instead of ~0.5 ms on this machine. So the reference runs
  ``ssh -tt -R ... 'exec sleep 900'``: the same forwarding, with OpenSSH at
  its best for latency (``pty=False`` gives the stock ``-N`` behaviour).
- ``qanat``: ``qanat gateway`` and ``qanat connect`` as separate processes,
  the connector declaring the same two remotes over one tunnel, over TLS
  (``wss://``) with the run's certificate.
- ``go``: the Go interop peer of tests/interop (``gopeer server``, like
  ``chisel server --reverse``, and ``gopeer client``, like ``chisel
  client``): the same protocol on Go's x/crypto/ssh and gorilla/websocket,
  the stack of chisel and outsystemscc, as a stand-in for them. Same TLS
  certificate (trusted by the client through ``SSL_CERT_FILE``). Built here
  offline from Debian's packages; unavailable without them.

Setup raises :class:`Unavailable` when a path cannot be tried on this machine
(a program is missing), and ``RuntimeError`` when it was tried and failed.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from loadgen import wait_ready
from procs import Child, ProcessSet, free_port

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0


class Unavailable(Exception):
    """This path cannot run here; the message says why."""


@dataclass(frozen=True)
class Endpoints:
    echo_port: int
    sink_port: int


@dataclass(frozen=True)
class BenchTls:
    """The one certificate every TLS path serves (self-signed, for 127.0.0.1)."""

    cert: FsPath
    key: FsPath

    @classmethod
    def make(cls, workdir: FsPath) -> BenchTls:
        from qanat.tls import ensure_dev_certificate

        cert, key = ensure_dev_certificate(workdir, (HOST, "localhost"))
        return cls(cert, key)


@dataclass(frozen=True)
class Path:
    name: str
    label: str
    host: str
    echo_port: int
    sink_port: int
    server: Child | None = None
    client: Child | None = None


@contextmanager
def direct(endpoints: Endpoints) -> Iterator[Path]:
    yield Path("direct", "direct (no tunnel)", HOST, endpoints.echo_port, endpoints.sink_port)


# ---------------------------------------------------------------- OpenSSH

SSHD = FsPath("/usr/sbin/sshd")
SSH_CIPHER = "aes128-gcm@openssh.com"
#: Lifetime of the remote ``sleep`` that holds the pty session open; longer
#: than the watchdog, and short enough that a leftover would end by itself.
SESSION_S = 900


def _run(argv: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def openssh_version() -> str:
    ssh = shutil.which("ssh")
    if ssh is None:
        return "not installed"
    return _run([ssh, "-V"]).stderr.strip().split(",")[0]


@contextmanager
def openssh(
    procs: ProcessSet, endpoints: Endpoints, workdir: FsPath, *, pty: bool = True
) -> Iterator[Path]:
    """sshd + ``ssh -R``; with ``pty`` the client also runs ``sleep`` in a pty
    session, which is what makes OpenSSH set TCP_NODELAY (see module doc)."""
    ssh, keygen = shutil.which("ssh"), shutil.which("ssh-keygen")
    if ssh is None or keygen is None or not SSHD.exists():
        raise Unavailable("needs openssh-server and openssh-client (scripts/system-deps.sh)")
    d = workdir / "ssh"
    d.mkdir(mode=0o700)
    host_key, user_key = d / "host_ed25519", d / "user_ed25519"
    for key in (host_key, user_key):
        done = _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "qanat-bench", "-f", str(key)])
        if done.returncode != 0:
            raise RuntimeError(f"ssh-keygen failed: {done.stderr.strip()}")
    (d / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    port = free_port(HOST)
    host_pub = host_key.with_suffix(".pub").read_text().split()
    (d / "known_hosts").write_text(f"[{HOST}]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {HOST}",
                f"HostKey {host_key}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "AllowTcpForwarding remote",
                "GatewayPorts no",
                "X11Forwarding no",
                "PermitTTY yes",
                "PrintMotd no",
                "UseDNS no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        # sshd refuses to start without its privilege-separation directory.
        FsPath("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    check = _run([str(SSHD), "-t", "-f", str(config)])
    if check.returncode != 0:
        raise RuntimeError(f"sshd -t rejected the config: {check.stderr.strip()}")

    sshd = procs.start("sshd", [SSHD, "-D", "-e", "-f", config])
    client = None
    try:
        _wait_listening(sshd, port)
        echo_app, sink_app = free_port(HOST), free_port(HOST)
        client = procs.start(
            "ssh -R",
            [
                ssh, *(["-tt"] if pty else ["-N", "-T"]), "-F", "/dev/null",
                "-p", str(port), "-i", str(user_key),
                "-c", SSH_CIPHER,
                "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "UpdateHostKeys=no",
                "-o", "ExitOnForwardFailure=yes",
                "-o", "LogLevel=ERROR",
                "-R", f"{HOST}:{echo_app}:{HOST}:{endpoints.echo_port}",
                "-R", f"{HOST}:{sink_app}:{HOST}:{endpoints.sink_port}",
                f"{getpass.getuser()}@{HOST}",
                *([f"exec sleep {SESSION_S}"] if pty else []),
            ],
        )  # fmt: skip
        _wait_path(client, echo_app, sink_app)
        how = "pty session, TCP_NODELAY" if pty else "-N, no session, Nagle on"
        label = f"ssh -R ({openssh_version()}, {SSH_CIPHER}, {how})"
        yield Path("ssh", label, HOST, echo_app, sink_app, sshd, client)
    finally:
        if client is not None:
            procs.stop(client)
        procs.stop(sshd)


def _wait_listening(child: Child, port: int) -> None:
    """Poll until ``port`` accepts TCP (sshd prints nothing when ready)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited: {child.tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.recv(64)  # the SSH version line: the server is really up
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{child.name} not listening on {port} after {READY_TIMEOUT_S:.0f}s")


def _wait_path(client: Child, echo_app: int, sink_app: int) -> None:
    try:
        wait_ready(HOST, echo_app, sink_app, READY_TIMEOUT_S)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; {client.name}: {client.tail()}") from None


# ---------------------------------------------------------------- qanat


def qanat_executable() -> str:
    """The venv's ``qanat`` script (the one next to this Python), else PATH."""
    beside = FsPath(sys.executable).with_name("qanat")
    if beside.exists():
        return str(beside)
    found = shutil.which("qanat")
    if found is None:
        raise Unavailable("no qanat executable (pip install -e . in the venv)")
    return found


def _check_subcommand(exe: str, sub: str) -> None:
    try:
        done = _run([exe, sub, "--help"])
    except subprocess.TimeoutExpired:
        raise Unavailable(f"`qanat {sub} --help` did not answer in 30s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise Unavailable(
            f"`qanat {sub} --help` exited {done.returncode}: {lines[-1] if lines else ''}"
        )


@contextmanager
def qanat(
    procs: ProcessSet,
    endpoints: Endpoints,
    workdir: FsPath,
    tls: BenchTls,
    exe: str | None = None,
) -> Iterator[Path]:
    """``qanat gateway`` + ``qanat connect`` over TLS; ``exe`` defaults to the venv's."""
    exe = exe or qanat_executable()
    for sub in ("gateway", "connect"):
        _check_subcommand(exe, sub)
    try:
        from qanat.wire.tokens import hash_token, new_address_id, new_token
    except ImportError as exc:
        raise Unavailable(f"qanat package not importable: {exc}") from None

    d = workdir / "qanat"
    (d / "data").mkdir(parents=True)
    token, address_id = new_token(), new_address_id()
    stage_file = d / "stages.toml"
    stage_file.write_text(
        "[[stage]]\n"
        'name = "bench"\n'
        f'address_id = "{address_id}"\n'
        f'token_sha256 = ["{hash_token(token)}"]\n'
        f'bind = "{HOST}"\n'
        'ports = "1024-65535"\n'
    )
    port = free_port(HOST)
    gateway = procs.start(
        "qanat gateway",
        [exe, "gateway", "--listen", f"{HOST}:{port}", "--data-dir", d / "data",
         "--stage-file", stage_file, "--tls-cert", tls.cert, "--tls-key", tls.key],
    )  # fmt: skip
    connector = None
    try:
        gateway.wait_for_line("listening on", READY_TIMEOUT_S)
        echo_app, sink_app = free_port(HOST), free_port(HOST)
        connector = procs.start(
            "qanat connect",
            [exe, "connect", "--header", f"token: {token}", "--tls-ca", tls.cert,
             f"https://{HOST}:{port}/{address_id}",
             f"R:{echo_app}:{HOST}:{endpoints.echo_port}",
             f"R:{sink_app}:{HOST}:{endpoints.sink_port}"],
        )  # fmt: skip
        _wait_path(connector, echo_app, sink_app)
        label = "qanat gateway + connect (wss://)"
        yield Path("qanat", label, HOST, echo_app, sink_app, gateway, connector)
    finally:
        if connector is not None:
            procs.stop(connector)
        procs.stop(gateway)


# ---------------------------------------------------------------- the Go peer

TESTS = FsPath(__file__).resolve().parent.parent / "tests"


def _gopeer_support() -> object:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from support import gopeer as support

    return support


@contextmanager
def gopeer(
    procs: ProcessSet, endpoints: Endpoints, workdir: FsPath, tls: BenchTls
) -> Iterator[Path]:
    """``gopeer server`` + ``gopeer client`` (Go's SSH and WebSocket stacks) over TLS."""
    support: Any = _gopeer_support()
    reason = support.missing()
    if reason is not None:
        raise Unavailable(reason)
    d = workdir / "go"
    d.mkdir()
    binary = support.build(d)
    port = free_port(HOST)
    server = procs.start(
        "gopeer server",
        [binary, "server", "-listen", f"{HOST}:{port}",
         "-tls-cert", tls.cert, "-tls-key", tls.key],
    )  # fmt: skip
    client = None
    try:
        server.wait_for_line("server: Listening on", READY_TIMEOUT_S)
        echo_app, sink_app = free_port(HOST), free_port(HOST)
        client = procs.start(
            "gopeer client",
            [binary, "client", "-header", "token: bench",
             f"https://{HOST}:{port}/sg_00000000-0000-4000-8000-000000000000",
             f"R:{echo_app}:{HOST}:{endpoints.echo_port}",
             f"R:{sink_app}:{HOST}:{endpoints.sink_port}"],
            env=support.peer_env(tls.cert),
        )  # fmt: skip
        _wait_path(client, echo_app, sink_app)
        label = (
            f"Go peer server + client ({_go_version()}, x/crypto/ssh, gorilla/websocket, wss://)"
        )
        yield Path("go", label, HOST, echo_app, sink_app, server, client)
    finally:
        if client is not None:
            procs.stop(client)
        procs.stop(server)


def _go_version() -> str:
    go = shutil.which("go")
    if go is None:
        return "go ?"
    words = _run([go, "version"]).stdout.split()
    return words[2] if len(words) > 2 else "go ?"
