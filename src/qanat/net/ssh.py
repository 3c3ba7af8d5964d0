"""asyncssh adapter: chisel-v3's SSH dialect. Nothing else imports asyncssh.

chisel speaks standard SSH with four twists, all handled here:

1. Version lines are ``SSH-chisel-v3-server`` / ``SSH-chisel-v3-client``
   (no ``2.0``). asyncssh only accepts ``SSH-2.0-``, so the two connection
   classes below replace its version exchange. The lines enter the key
   exchange hash, so they must be exactly what goes on the wire.
2. The client's first global request ``config`` carries raw JSON (not an SSH
   string) and a refusal carries the error text as the payload of
   ``SSH_MSG_REQUEST_FAILURE`` (the Go library allows a payload there).
3. Keepalive is a global request ``ping`` answered with success + ``pong``.
4. App connections travel in channels of type ``chisel`` whose extra data is
   the raw ``host:port`` (``/udp`` appended for UDP).

Two qanat-only extras, global requests from connector to gateway sent only
to a gateway that advertised them in the 101 answer: ``drain@qanat`` ("send
me no new channels") and ``describe@qanat`` (what an endpoint is, with its
OpenAPI document; see :mod:`qanat.wire.describe`).

The gateway gets an :class:`SshTunnel` from :func:`serve_tunnel`; the
connector gets one from :func:`connect_tunnel`. Both only see qanat's errors.
This module touches a few private asyncssh members (version exchange, global
request queue, generic channel open); pyproject pins the asyncssh range and
tests/adapter/test_ssh_adapter.py exercises every one of them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import asyncssh
from asyncssh.constants import (
    MSG_REQUEST_FAILURE,
    MSG_REQUEST_SUCCESS,
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
)

from qanat.errors import ChannelOpenFailed, ConfigError, RemotesRejected, TunnelError
from qanat.wire import sshalgs
from qanat.wire.describe import DESCRIBE_REQUEST
from qanat.wire.handshake import (
    CHANNEL_TYPE,
    CLIENT_VERSION,
    CONFIG_REQUEST,
    DRAIN_REQUEST,
    PING_REQUEST,
    PONG_PAYLOAD,
    SERVER_VERSION,
)

log = logging.getLogger("qanat.ssh")


def _skip_packet_logging_unless_enabled() -> None:
    """asyncssh formats a line and copies the payload for *every* packet
    before its logger checks the level (4-5 us and a 32 KiB copy per data
    packet, measured). Gate the work on the level it will be checked
    against; with ``-vvv`` (asyncssh debug level 3) nothing changes."""
    from asyncssh.logging import SSHLogger
    from asyncssh.packet import SSHPacketLogger

    original = SSHPacketLogger._log_packet
    if getattr(original, "_qanat_gated", False):
        return

    def _log_packet(self: Any, *args: Any) -> None:
        if SSHLogger._debug_level >= 3:
            original(self, *args)

    _log_packet._qanat_gated = True  # type: ignore[attr-defined]
    setattr(SSHPacketLogger, "_log_packet", _log_packet)  # noqa: B010 - patching on purpose


_skip_packet_logging_unless_enabled()

#: Per-channel receive window and the largest data packet we ask peers to
#: send (OpenSSH's and Go's value). Measured: 128 KiB and 224 KiB packets
#: cost *more* CPU here (kernel time tripled on loopback), see
#: docs/benchmarks.md.
DEFAULT_WINDOW_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_PACKET_BYTES = 32 * 1024
_MAX_VERSION_LINE = 255
#: Longer than any user name asyncssh accepts (1024 bytes), see _ServerConnection.
_NO_USER_YET_CHARS = 1025


# -- host keys --------------------------------------------------------------


def debug_packets() -> None:
    """``-vvv``: let asyncssh log its packet-level debugging."""
    asyncssh.set_debug_level(3)


def chisel_fingerprint(public_data: bytes) -> str:
    """chisel's fingerprint format: base64 of the SHA-256 of the key blob."""
    return base64.b64encode(hashlib.sha256(public_data).digest()).decode()


def same_fingerprint(a: str, b: str) -> bool:
    """Compare fingerprints given as chisel (padded) or OpenSSH (``SHA256:``) text."""

    def norm(text: str) -> str:
        text = text.strip()
        text = text.removeprefix("SHA256:")
        return text.rstrip("=")

    return bool(a) and norm(a) == norm(b)


class HostKey:
    """The gateway's ECDSA P-256 host key, generated once and persisted."""

    ALGORITHM = "ecdsa-sha2-nistp256"

    def __init__(self, key: Any) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> HostKey:
        """Load the key at ``path``, creating it (mode 0600) if absent.

        Raises:
            ConfigError: the file exists but is not a P-256 private key.
        """
        if path.exists():
            try:
                key = asyncssh.read_private_key(str(path))
            except (OSError, asyncssh.KeyImportError) as exc:
                raise ConfigError(f"host key {path}: {exc}") from None
            if key.get_algorithm() != cls.ALGORITHM:
                raise ConfigError(
                    f"host key {path} is {key.get_algorithm()}, expected {cls.ALGORITHM}; "
                    "move it away to generate a new one"
                )
            return cls(key)
        key = asyncssh.generate_private_key(cls.ALGORITHM)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = key.export_private_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return cls(key)

    @property
    def fingerprint(self) -> str:
        return chisel_fingerprint(self._key.public_data)

    @property
    def asyncssh_key(self) -> Any:
        return self._key


# -- version exchange and global requests -------------------------------------


class _ChiselDialect:
    """Mixin replacing asyncssh's version exchange with chisel's lines."""

    _qanat_version: bytes
    _inpbuf: bytes

    def _send_version(self) -> None:
        version = self._qanat_version
        if self.is_client():  # type: ignore[attr-defined]
            self._client_version = version
        else:
            self._server_version = version
        self.set_extra_info(local_version=version.decode())  # type: ignore[attr-defined]
        self._send(version + b"\r\n")  # type: ignore[attr-defined]

    def _recv_version(self) -> bool:
        idx = self._inpbuf.find(b"\n", 0, _MAX_VERSION_LINE)
        if idx < 0:
            if len(self._inpbuf) >= _MAX_VERSION_LINE:
                self._force_close(  # type: ignore[attr-defined]
                    asyncssh.ProtocolError("peer sent no SSH version line (not an SSH stream)")
                )
            return False
        line = self._inpbuf[:idx].rstrip(b"\r")
        self._inpbuf = self._inpbuf[idx + 1 :]
        if not line.startswith(b"SSH-"):
            self._force_close(  # type: ignore[attr-defined]
                asyncssh.ProtocolNotSupported(f"not an SSH version line: {line[:40]!r}")
            )
            return False
        if self.is_client():  # type: ignore[attr-defined]
            self._server_version = line
        else:
            self._client_version = line
        self.set_extra_info(peer_version=line.decode("ascii", "replace"))  # type: ignore[attr-defined]
        self._send_kexinit()  # type: ignore[attr-defined]
        self._kexinit_sent = True
        self._recv_handler = self._recv_pkthdr  # type: ignore[attr-defined]
        return True

    def _qanat_reply(self, ok: bool, payload: bytes = b"") -> None:
        """Answer the global request at the head of the queue, with a payload
        even on failure (as chisel's Go server does)."""
        queue = self._global_request_queue  # type: ignore[attr-defined]
        _, _, want_reply = queue.pop(0)
        if want_reply:
            self.send_packet(MSG_REQUEST_SUCCESS if ok else MSG_REQUEST_FAILURE, payload)  # type: ignore[attr-defined]
        if queue:
            self._service_next_global_request()  # type: ignore[attr-defined]

    def _process_ping_global_request(self, _packet: Any) -> None:
        self._qanat_reply(True, PONG_PAYLOAD)

    async def qanat_request(self, name: str, payload: bytes) -> tuple[bool, bytes]:
        """Send a global request with a raw payload; return (ok, reply payload)."""
        pkttype, packet = await self._make_global_request(name.encode(), payload)  # type: ignore[attr-defined]
        return pkttype == MSG_REQUEST_SUCCESS, packet.get_remaining_payload()


class ServerHooks(Protocol):
    """What the gateway does for one tunnel's SSH events."""

    async def on_config(self, payload: bytes) -> str | None:
        """Handle ``config``; return None to accept, or the refusal text."""

    def on_lost(self, exc: BaseException | None) -> None:
        """The SSH connection is gone (after the transport closed)."""

    def on_drain(self) -> bool:
        """The connector asks for no new channels (``drain@qanat``); True to accept."""

    async def on_describe(self, payload: bytes) -> str | None:
        """A ``describe@qanat`` piece; None to accept, or the refusal text."""


class _ServerConnection(_ChiselDialect, asyncssh.SSHServerConnection):
    _qanat_version = SERVER_VERSION
    qanat_hooks: ServerHooks

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # asyncssh calls begin_auth() only when a request's user name differs
        # from the previous one, and starts from "": so Go's client (empty
        # user, PROTOCOL.md section 3) never reached begin_auth() and its
        # "none" was refused with no method listed. A name no request can
        # carry (asyncssh refuses names this long) makes the first request,
        # whatever its name and method, go through begin_auth(), which lets
        # everyone in: the token checked before the upgrade is the credential.
        self._username = "\0" * _NO_USER_YET_CHARS

    def _process_config_global_request(self, packet: Any) -> None:
        # Binding listeners is asynchronous; later global requests wait in
        # asyncssh's queue until this one is answered, as the protocol wants.
        self.create_task(self._qanat_config(packet.get_remaining_payload()))

    async def _qanat_config(self, payload: bytes) -> None:
        try:
            error = await self.qanat_hooks.on_config(payload)
        except Exception as exc:  # a bug must not leave the client hanging
            log.exception("config handler failed")
            error = f"internal error handling config: {exc}"
        if self._transport is not None:
            self._qanat_reply(error is None, (error or "").encode())

    def _process_drain_at_qanat_global_request(self, _packet: Any) -> None:
        # qanat's own request (see DRAIN_REQUEST); asyncssh answers failure to
        # requests it has no handler for, a stock chisel server never answers.
        self._qanat_reply(self.qanat_hooks.on_drain())

    def _process_describe_at_qanat_global_request(self, packet: Any) -> None:
        # Like config: answered in order once the hook is done (it writes to
        # the portal's database in a worker thread).
        self.create_task(self._qanat_describe(packet.get_remaining_payload()))

    async def _qanat_describe(self, payload: bytes) -> None:
        hook = getattr(self.qanat_hooks, "on_describe", None)
        try:
            error = "describe@qanat is not handled here" if hook is None else await hook(payload)
        except Exception as exc:  # a bug must not leave the client hanging
            log.exception("describe handler failed")
            error = f"internal error handling describe@qanat: {exc}"
        if self._transport is not None:
            self._qanat_reply(error is None, (error or "").encode())


class _ServerOwner(asyncssh.SSHServer):
    """asyncssh's per-connection server object: no user auth (the token
    already authenticated the connector), no sessions, no forwarding.

    Whatever user name and method the client tries first succeeds: Go's
    client sends an empty name and ``none`` (then ``password`` with an empty
    password, if ``none`` failed); OpenSSH-style clients send a name.
    """

    def __init__(self, hooks: ServerHooks) -> None:
        self._hooks = hooks

    def begin_auth(self, username: str) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._hooks.on_lost(exc)


class _ClientConnection(_ChiselDialect, asyncssh.SSHClientConnection):
    _qanat_version = CLIENT_VERSION
    qanat_dialer: Callable[[str], Awaitable[Any]]
    qanat_window: int = DEFAULT_WINDOW_BYTES

    def _process_chisel_open(self, packet: Any) -> tuple[Any, Awaitable[Any]]:
        target = packet.get_remaining_payload().decode("utf-8", "replace")
        chan = self.create_tcp_channel(
            window=self.qanat_window, max_pktsize=DEFAULT_MAX_PACKET_BYTES
        )
        return chan, self._qanat_dial(target)

    async def _qanat_dial(self, target: str) -> Any:
        try:
            return await self.qanat_dialer(target)
        except ChannelOpenFailed as exc:
            code = (
                OPEN_ADMINISTRATIVELY_PROHIBITED
                if exc.code == ChannelOpenFailed.ADMINISTRATIVELY_PROHIBITED
                else OPEN_CONNECT_FAILED
            )
            raise asyncssh.ChannelOpenError(code, exc.reason or str(exc)) from None
        except Exception as exc:
            log.exception("dialer failed for %s", target)
            raise asyncssh.ChannelOpenError(OPEN_CONNECT_FAILED, f"internal error: {exc}") from None


class _Discard:
    """Session for a channel whose opener gave up waiting: closes it at once."""

    def connection_made(self, chan: Any) -> None:
        chan.close()

    def session_started(self) -> None:
        pass

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class _LateOpen:
    """Hands the real session to a channel only if it opens in time."""

    def __init__(self, session_factory: Callable[[], Any]) -> None:
        self._factory = session_factory
        self._abandoned = False

    def factory(self) -> Any:
        return _Discard() if self._abandoned else self._factory()

    def abandon(self, task: asyncio.Future[Any], chan: Any) -> None:
        self._abandoned = True
        if not task.done():
            task.add_done_callback(_retrieve)
        elif not task.cancelled() and task.exception() is None:
            # It opened just as the waiter gave up: the session exists, so
            # close the channel (the session sees connection_lost).
            chan.close()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


# -- the tunnel object both sides use -----------------------------------------


class SshTunnel:
    """One SSH connection inside a WebSocket, as the gateway or connector sees it."""

    def __init__(self, conn: Any, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self._conn = conn
        self._window = window_bytes
        self._late: set[asyncio.Future[Any]] = set()

    @property
    def peer_version(self) -> str:
        return str(self._conn.get_extra_info("peer_version", ""))

    @property
    def server_fingerprint(self) -> str:
        key = self._conn.get_server_host_key()
        return chisel_fingerprint(key.public_data) if key is not None else ""

    async def open_channel(
        self,
        extra: bytes,
        session_factory: Callable[[], Any],
        *,
        timeout_s: float | None = None,
    ) -> Any:
        """Open a ``chisel`` channel with ``extra`` data; return its session.

        With ``timeout_s``, an open the peer has not answered in time is
        abandoned: should the confirmation still come, that channel is closed
        at once and ``session_factory`` is never called for it.

        Raises:
            ChannelOpenFailed: the peer refused (``reason`` carries its text)
                or the connection is gone.
            TimeoutError: no answer within ``timeout_s``.
        """
        try:
            chan = self._conn.create_tcp_channel(
                window=self._window, max_pktsize=DEFAULT_MAX_PACKET_BYTES
            )
        except (OSError, asyncssh.Error) as exc:  # the connection is closing
            raise ChannelOpenFailed(f"channel failed: {exc}", reason=str(exc)) from None
        if timeout_s is None:
            opening: Awaitable[Any] = chan._open_forward(session_factory, CHANNEL_TYPE, extra)
            return await self._translate_open(opening)
        late = _LateOpen(session_factory)
        task = asyncio.ensure_future(chan._open_forward(late.factory, CHANNEL_TYPE, extra))
        try:
            async with asyncio.timeout(timeout_s):
                return await self._translate_open(asyncio.shield(task))
        except (TimeoutError, asyncio.CancelledError):
            # Whatever the peer answers later is thrown away.
            late.abandon(task, chan)
            if not task.done():
                self._late.add(task)
                task.add_done_callback(self._late.discard)
            raise

    @staticmethod
    async def _translate_open(opening: Awaitable[Any]) -> Any:
        try:
            return await opening
        except asyncssh.ChannelOpenError as exc:
            raise ChannelOpenFailed(
                f"channel refused: {exc.reason}", reason=exc.reason, code=exc.code
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise ChannelOpenFailed(f"channel failed: {exc}", reason=str(exc), code=0) from None

    async def request(self, name: str, payload: bytes = b"") -> tuple[bool, bytes]:
        """Send a global request (``config``, ``ping``) and wait for the reply.

        Raises:
            TunnelError: the connection closed before a reply came.
        """
        try:
            result: tuple[bool, bytes] = await self._conn.qanat_request(name, payload)
        except (OSError, asyncssh.Error) as exc:
            raise TunnelError(f"SSH request {name!r} failed: {exc}") from None
        return result

    async def ping(self, timeout_s: float) -> float:
        """Round-trip one ``ping``; return seconds.

        Raises:
            TimeoutError: no answer within ``timeout_s``.
            TunnelError: the connection is gone or the answer was a failure.
        """
        start = time.perf_counter()
        async with asyncio.timeout(timeout_s):
            ok, _ = await self.request(PING_REQUEST)
        if not ok:
            raise TunnelError("peer refused the keepalive ping")
        return time.perf_counter() - start

    def close(self) -> None:
        self._conn.close()

    def abort(self) -> None:
        self._conn.abort()

    async def wait_closed(self) -> None:
        await self._conn.wait_closed()


def serve_tunnel(
    transport_attach: Callable[[asyncio.Protocol], asyncio.BaseTransport],
    host_key: HostKey,
    hooks: ServerHooks,
    *,
    login_timeout_s: float = 30.0,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
) -> SshTunnel:
    """Run the gateway's SSH server over an upgraded connection.

    ``transport_attach(protocol)`` must hand the byte stream to ``protocol``
    (call its ``connection_made``) and return the transport.
    """
    loop = asyncio.get_running_loop()
    options = asyncssh.SSHServerConnectionOptions(
        server_factory=lambda: _ServerOwner(hooks),
        server_host_keys=[host_key.asyncssh_key],
        config=None,
        login_timeout=login_timeout_s,
        keepalive_interval=0,
        allow_pty=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        tcp_keepalive=False,
        kex_algs=sshalgs.KEX_ALGS,
        encryption_algs=sshalgs.ENCRYPTION_ALGS,
        mac_algs=sshalgs.MAC_ALGS,
        compression_algs=sshalgs.COMPRESSION_ALGS,
        signature_algs=sshalgs.HOST_KEY_ALGS,
    )
    conn = _ServerConnection(loop, options, wait=None)
    conn.qanat_hooks = hooks
    transport_attach(conn)
    return SshTunnel(conn, window_bytes)


async def connect_tunnel(
    transport_attach: Callable[[asyncio.Protocol], Awaitable[asyncio.BaseTransport]],
    dialer: Callable[[str], Awaitable[Any]],
    *,
    username: str = "",
    password: str = "",
    auth_methods: tuple[str, ...] = ("none", "password"),
    timeout_s: float = 30.0,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
) -> SshTunnel:
    """Run the connector's SSH client over a connection being upgraded.

    ``dialer(target)`` is called for every ``chisel`` channel the gateway
    opens; it returns the channel's session or raises ChannelOpenFailed.
    User authentication is what chisel's Go client does: the user name as
    given (empty without ``--auth``), ``none`` first, then ``password``
    (empty without ``--auth``) if the server lists it. ``auth_methods``
    changes the order, for tests that play other clients.

    Raises:
        TunnelError: the SSH handshake failed or timed out.
    """
    loop = asyncio.get_running_loop()
    options = asyncssh.SSHClientConnectionOptions(
        config=None,
        username=username,
        password=password,
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        preferred_auth=",".join(auth_methods),
        keepalive_interval=0,
        tcp_keepalive=False,
        kex_algs=sshalgs.KEX_ALGS,
        encryption_algs=sshalgs.ENCRYPTION_ALGS,
        mac_algs=sshalgs.MAC_ALGS,
        compression_algs=sshalgs.COMPRESSION_ALGS,
        server_host_key_algs=sshalgs.HOST_KEY_ALGS,
        signature_algs=sshalgs.HOST_KEY_ALGS,
    )
    options.waiter = loop.create_future()
    conn = _ClientConnection(loop, options, wait="auth")
    conn.qanat_dialer = dialer
    conn.qanat_window = window_bytes
    try:
        async with asyncio.timeout(timeout_s):
            await transport_attach(conn)
            await options.waiter
    except TimeoutError:
        conn.abort()
        raise TunnelError(f"SSH handshake did not finish within {timeout_s:g}s") from None
    except (OSError, asyncssh.Error) as exc:
        conn.abort()
        raise TunnelError(f"SSH handshake failed: {exc}") from None
    return SshTunnel(conn, window_bytes)


async def send_drain(tunnel: SshTunnel, timeout_s: float) -> bool:
    """Ask the gateway for no new channels; True when it agreed.

    Only for a gateway that advertised the ``drain`` feature: a stock chisel
    server never answers unknown requests, and global replies are matched in
    order, so an unanswered request would swallow the next ``ping`` reply.

    Raises:
        TunnelError: the connection closed first.
    """
    try:
        async with asyncio.timeout(timeout_s):
            ok, _ = await tunnel.request(DRAIN_REQUEST)
    except TimeoutError:
        return False
    return ok


async def send_describe(tunnel: SshTunnel, payload: bytes, timeout_s: float) -> str | None:
    """Send one ``describe@qanat`` piece; None when accepted, else the gateway's text.

    Only for a gateway that advertised the ``describe`` feature (see send_drain).

    Raises:
        TunnelError: the connection closed first.
    """
    try:
        async with asyncio.timeout(timeout_s):
            ok, reply = await tunnel.request(DESCRIBE_REQUEST, payload)
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    return None if ok else (reply.decode("utf-8", "replace").strip() or "refused")


async def send_config(tunnel: SshTunnel, payload: bytes) -> None:
    """Send the ``config`` request; raise RemotesRejected with the server's text."""
    ok, reply = await tunnel.request(CONFIG_REQUEST, payload)
    if not ok:
        text = reply.decode("utf-8", "replace").strip() or "no reason given"
        raise RemotesRejected(f"gateway refused the remotes: {text}")


__all__ = [
    "DEFAULT_MAX_PACKET_BYTES",
    "DEFAULT_WINDOW_BYTES",
    "OPEN_ADMINISTRATIVELY_PROHIBITED",
    "HostKey",
    "ServerHooks",
    "SshTunnel",
    "chisel_fingerprint",
    "connect_tunnel",
    "same_fingerprint",
    "send_config",
    "send_describe",
    "send_drain",
    "serve_tunnel",
]
