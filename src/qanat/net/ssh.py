"""The asyncio adapter of qanat's own SSH core: chisel-v3's SSH dialect.

:mod:`qanat.wire.ssh` does SSH without I/O; this module drives it from
asyncio callbacks (no task per packet, one write per event-loop iteration
for every channel of a tunnel) and speaks chisel's dialect on top:

1. Version lines ``SSH-chisel-v3-server`` / ``SSH-chisel-v3-client``, each
   written on its own (one WebSocket frame each, as chisel does).
2. The client's first global request ``config`` carries raw JSON (not an SSH
   string); a refusal carries the error text as the payload of
   ``SSH_MSG_REQUEST_FAILURE`` (the Go library allows a payload there).
3. Keepalive is a global request ``ping`` answered with success + ``pong``.
4. App connections travel in channels of type ``chisel`` whose extra data is
   the raw ``host:port`` (``/udp`` appended for UDP).
5. User authentication as Go's client does it (empty user, ``none`` then
   ``password``); the gateway lets every client in (the token checked before
   the upgrade is the credential), see PROTOCOL.md §3.

Two qanat-only extras, global requests from connector to gateway sent only
to a gateway that advertised them in the 101 answer: ``drain@qanat`` ("send
me no new channels") and ``describe@qanat`` (what an endpoint is, with its
OpenAPI document; see :mod:`qanat.wire.describe`).

The gateway gets an :class:`SshTunnel` from :func:`serve_tunnel`; the
connector gets one from :func:`connect_tunnel`. Sessions (the splice's
channel end, the UDP channels) see a channel with ``write``, ``write_eof``,
``close``, ``pause_reading``, ``resume_reading`` and are called with
``connection_made(chan)``, ``session_started()``, ``data_received(data,
None)``, ``eof_received()``, ``connection_lost(exc)``, ``pause_writing()``,
``resume_writing()``. Only qanat's errors leave this module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from qanat.errors import (
    ChannelOpenFailed,
    ConfigError,
    HandshakeError,
    RemotesRejected,
    TunnelError,
)
from qanat.runtime import TaskOwner
from qanat.wire import sshalgs
from qanat.wire.describe import DESCRIBE_REQUEST
from qanat.wire.handshake import (
    CHANNEL_TYPE,
    CLIENT_VERSION,
    CONFIG_REQUEST,
    DIAL_FAILED_REQUEST,
    DRAIN_REQUEST,
    EARLY_OPEN_MARK,
    PING_REQUEST,
    PONG_PAYLOAD,
    SERVER_VERSION,
)
from qanat.wire.ssh import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    OPEN_UNKNOWN_CHANNEL_TYPE,
    EcdsaKey,
    SshConnection,
    SshLocalError,
    SshRemoteError,
)
from qanat.wire.ssh.codec import Reader, string
from qanat.wire.ssh.errors import DISCONNECT_BY_APPLICATION
from qanat.wire.ssh.kex import CIPHERS as CORE_CIPHERS
from qanat.wire.ssh.kex import KEX_ALGORITHMS as CORE_KEX

log = logging.getLogger("qanat.ssh")

#: Per-channel receive window and the largest data packet we ask peers to
#: send (OpenSSH's and Go's value). Measured: 128 KiB and 224 KiB packets
#: cost *more* CPU here (kernel time tripled on loopback), see
#: docs/benchmarks.md.
DEFAULT_WINDOW_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_PACKET_BYTES = 32 * 1024
#: Largest write handed to the transport at once (one WebSocket frame).
MAX_WRITE_BYTES = 256 * 1024
#: Longest a CLOSE that only frees a channel waits for other output to go
#: with (the next channel open, as a rule): one write and one wake-up of the
#: peer fewer per app connection; the channel id is reused that much later.
LAZY_FLUSH_S = 0.002


#: ``early(target)``: for a channel to be confirmed before its dial, the
#: session and the dial's future (None, or ChannelOpenFailed when it
#: failed), or None to dial first and answer with the outcome.
EarlyOpen = Callable[[str], "tuple[Any, asyncio.Future[Any]] | None"]
EARLY_OPEN_MARK_TEXT = EARLY_OPEN_MARK.decode("ascii")
#: What the core offers: the reviewed lists of qanat.wire.sshalgs, in their
#: order, limited to what qanat.wire.ssh implements.
KEX_ALGS = tuple(a for a in sshalgs.KEX_ALGS if a in CORE_KEX)
ENCRYPTION_ALGS = tuple(c for c in sshalgs.ENCRYPTION_ALGS if c in CORE_CIPHERS)


# -- host keys --------------------------------------------------------------


def debug_packets() -> None:
    """``-vvv``: the SSH adapter's own debug lines (``qanat.ssh``)."""
    log.setLevel(logging.DEBUG)


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
    """The gateway's ECDSA P-256 host key, generated once and persisted
    (OpenSSH private key format, as ``ssh-keygen`` writes it)."""

    ALGORITHM = "ecdsa-sha2-nistp256"

    def __init__(self, key: EcdsaKey) -> None:
        self.key = key

    @classmethod
    def load_or_create(cls, path: Path) -> HostKey:
        """Load the key at ``path``, creating it (mode 0600) if absent.

        Raises:
            ConfigError: the file exists but is not a P-256 private key.
        """
        if path.exists():
            try:
                return cls(EcdsaKey.from_openssh(path.read_bytes()))
            except (OSError, ValueError, TypeError) as exc:
                raise ConfigError(
                    f"host key {path}: {exc}; expected an unencrypted {cls.ALGORITHM} key "
                    "(move it away to generate a new one)"
                ) from None
        key = EcdsaKey.generate()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.to_openssh())
        return cls(key)

    @property
    def fingerprint(self) -> str:
        return chisel_fingerprint(self.key.public_blob)


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


# -- channels as sessions see them ----------------------------------------------


class _Channel:
    """One open channel: what a session writes to and pauses."""

    __slots__ = (
        "_eof_held",
        "_held",
        "_reading",
        "_window_full",
        "closed",
        "id",
        "owner",
        "session",
    )

    def __init__(self, owner: _SshProtocol, chan_id: int, session: Any) -> None:
        self.owner = owner
        self.id = chan_id
        self.session = session
        self.closed = False
        self._reading = True
        self._window_full = False
        self._held: list[bytes] = []
        self._eof_held = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return
        conn = self.owner.conn
        try:
            full = conn.send_data(self.id, data)  # type: ignore[arg-type]
        except SshLocalError:
            if conn.closed or conn.pending_bytes(self.id) == 0:
                return  # closing or closed for sending: dropped, like a closing transport
            raise
        if full and not self._window_full:
            self._window_full = True
            self.session.pause_writing()
        # One TCP read is one write: sent now rather than one loop iteration
        # later (all packets of the read go in one writelines).
        self.owner.flush_now()

    def call_after_batch(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the data being delivered now has all been
        delivered (the end of this socket read), or soon if not delivering."""
        owner = self.owner
        if owner.in_batch:
            owner.after.append(callback)
        else:
            owner.loop.call_soon(callback)

    def writable(self) -> None:
        if self._window_full:
            self._window_full = False
            self.session.resume_writing()

    def write_eof(self) -> None:
        if not self.closed:
            self.owner.conn.send_eof(self.id)

    def close(self) -> None:
        if not self.closed:
            self.owner.conn.close_channel(self.id)

    def abort(self) -> None:
        if not self.closed:
            self.owner.conn.close_channel(self.id, discard=True)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.owner.conn.pause_channel(self.id)

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        held, self._held = self._held, []
        session = self.session
        for i, data in enumerate(held):
            session.data_received(data, None)
            if not self._reading:  # paused again: keep the rest in order
                self._held[:0] = held[i + 1 :]
                return
        if self._eof_held:
            self._eof_held = False
            self.eof()
        if not self.closed:
            self.owner.conn.resume_channel(self.id)

    def is_reading(self) -> bool:
        return self._reading

    def data(self, data: bytes) -> None:
        if self._reading:
            self.session.data_received(data, None)
        else:
            self._held.append(data)

    def eof(self) -> None:
        if not self._reading and self._held:
            self._eof_held = True
            return
        if not self.session.eof_received():
            self.close()

    def lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        # Data held for a paused reader is dropped with the channel, as a
        # closed transport drops its buffer; the reader paused because its
        # own side is gone or stuck.
        self._held = []
        self.session.connection_lost(exc)


# -- the protocol driving the core ------------------------------------------------


class _SshProtocol(asyncio.Protocol):
    """asyncio protocol + :class:`~qanat.wire.ssh.SshHandler` for one tunnel."""

    def __init__(self, conn_factory: Callable[[_SshProtocol], SshConnection], window: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.conn = conn_factory(self)
        self.conn.on_output = self._schedule
        self.conn.on_lazy_output = self._schedule_lazy
        self._lazy_timer: asyncio.TimerHandle | None = None
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.channels: dict[int, _Channel] = {}
        # Channels we asked for: (called with the outcome, session factory).
        self.opening: dict[int, tuple[OpenCallback, Callable[[], Any]]] = {}
        self.replies: deque[asyncio.Future[tuple[bool, bytes]]] = deque()
        self.tasks = TaskOwner("ssh")
        self.error: BaseException | None = None
        self._scheduled = False
        self._writing_paused = False
        self.in_batch = False
        self.after: list[Callable[[], None]] = []
        # Global requests wanting a reply, answered strictly in order.
        self._requests: deque[tuple[str, bytes]] = deque()
        self._request_busy = False

    # -- output: one writelines per loop iteration -------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)

    def flush_now(self) -> None:
        """Write what is waiting now, unless a socket read is being handled
        (its batch ends with one write for everything it caused)."""
        if self._scheduled and not self.in_batch:
            self._flush()

    def _schedule_lazy(self) -> None:
        # Output nobody waits for (a CLOSE that only frees a channel): it
        # leaves with the next write, or on its own after LAZY_FLUSH_S.
        if self._lazy_timer is None:
            self._lazy_timer = self.loop.call_later(LAZY_FLUSH_S, self._flush_lazy)

    def _flush_lazy(self) -> None:
        self._lazy_timer = None
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        out = self.conn.data_to_send()
        transport = self.transport
        if not out or transport is None or transport.is_closing():
            return
        # One write per loop iteration for every channel, cut into frames of
        # at most MAX_WRITE_BYTES: the peer's WebSocket bounds frame sizes
        # (1 MiB here), and a flush after a window opens can hold megabytes.
        size = 0
        start = 0
        for i, chunk in enumerate(out):
            size += len(chunk)
            if size >= MAX_WRITE_BYTES:
                transport.writelines(out[start : i + 1])
                start = i + 1
                size = 0
        if start < len(out):
            transport.writelines(out[start:] if start else out)

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The version line goes out alone (its own WebSocket frame, as chisel).
        self._flush()

    def data_received(self, data: bytes) -> None:
        # Everything one read brings is one batch: what sessions write in
        # reply and what they queue with call_after_batch goes out right
        # after it, not one event-loop iteration later (latency).
        self.in_batch = True
        try:
            self.conn.receive_data(data)
        except SshRemoteError as exc:
            self._fail(exc)
        except SshLocalError as exc:  # a handler asked for something invalid: a bug
            log.exception("SSH handler error")
            self._fail(exc)
        finally:
            self.in_batch = False
        after = self.after
        if after:
            self.after = []
            for callback in after:
                callback()
        if self._scheduled:
            self._flush()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        log.debug("SSH connection failed: %s", exc)
        self._flush()
        if self.transport is not None:
            self.transport.close()
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tasks.cancel()
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        self.conn.closed = True
        error: BaseException = self.error or exc or ConnectionResetError("SSH connection closed")
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()
        while self.replies:
            fut = self.replies.popleft()
            if not fut.done():
                fut.set_exception(TunnelError(f"SSH connection lost: {error}"))
        opening, self.opening = self.opening, {}
        for on_done, _ in opening.values():
            _report(
                on_done,
                None,
                ChannelOpenFailed(f"channel failed: {error}", reason=str(error), code=0),
            )
        channels, self.channels = self.channels, {}
        for chan in channels.values():
            chan.lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_lost(self.error or exc)

    def on_lost(self, exc: BaseException | None) -> None:
        pass

    def pause_writing(self) -> None:
        # The socket's buffer is full: every channel's writer waits.
        self._writing_paused = True
        for chan in list(self.channels.values()):
            chan.session.pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        for chan in list(self.channels.values()):
            if not chan._window_full:
                chan.session.resume_writing()

    # -- SshHandler ------------------------------------------------------------------

    def ssh_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def ssh_global_request(self, name: str, payload: bytes, want_reply: bool) -> None:
        if not want_reply:
            return
        self._requests.append((name, payload))
        if not self._request_busy:
            self._serve_requests()

    def _serve_requests(self) -> None:
        while self._requests and not self._request_busy:
            name, payload = self._requests.popleft()
            self.handle_request(name, payload)

    def handle_request(self, name: str, payload: bytes) -> None:
        if name == PING_REQUEST:
            self.conn.reply_global(True, PONG_PAYLOAD)
        else:
            self.conn.reply_global(False)

    def ssh_global_reply(self, ok: bool, payload: bytes) -> None:
        if self.replies:
            fut = self.replies.popleft()
            if not fut.done():
                fut.set_result((ok, payload))

    def ssh_channel_open(self, chan_id: int, kind: bytes, extra: bytes) -> None:
        self.conn.reject_channel(chan_id, OPEN_ADMINISTRATIVELY_PROHIBITED, "no channels here")

    def ssh_channel_open_result(self, chan_id: int, ok: bool, code: int, text: str) -> None:
        entry = self.opening.pop(chan_id, None)
        if entry is None:
            return
        on_done, factory = entry
        if not ok:
            _report(
                on_done, None, ChannelOpenFailed(f"channel refused: {text}", reason=text, code=code)
            )
            return
        # The session exists before this callback returns: data right after
        # the confirmation (an SMTP banner) has somewhere to go.
        session = factory()
        self.attach(chan_id, session)
        if text == EARLY_OPEN_MARK_TEXT:
            # Confirmed before the connector's dial: its outcome comes later
            # (data, or DIAL_FAILED_REQUEST).
            marked = getattr(session, "confirmed_early", None)
            if marked is not None:
                marked()
        _report(on_done, session, None)

    def attach(self, chan_id: int, session: Any) -> None:
        chan = _Channel(self, chan_id, session)
        self.channels[chan_id] = chan
        session.connection_made(chan)
        session.session_started()
        if self._writing_paused:
            session.pause_writing()

    def ssh_channel_data(self, chan_id: int, data: bytes) -> None:
        chan = self.channels.get(chan_id)
        if chan is not None:
            chan.data(data)

    def ssh_channel_eof(self, chan_id: int) -> None:
        chan = self.channels.get(chan_id)
        if chan is not None:
            chan.eof()

    def ssh_channel_closed(self, chan_id: int) -> None:
        chan = self.channels.pop(chan_id, None)
        if chan is not None:
            chan.lost(None)

    def ssh_channel_writable(self, chan_id: int) -> None:
        chan = self.channels.get(chan_id)
        if chan is not None and not self._writing_paused:
            chan.writable()

    def ssh_channel_request(self, chan_id: int, name: str, payload: bytes) -> None:
        chan = self.channels.get(chan_id)
        if chan is None or name != DIAL_FAILED_REQUEST:
            return
        notice = getattr(chan.session, "dial_failed", None)
        if notice is not None:
            try:
                reason = Reader(payload).text(1024)
            except SshRemoteError:
                reason = "(unreadable reason)"
            notice(reason or "dial failed")


class _ServerProtocol(_SshProtocol):
    def __init__(
        self, host_key: HostKey, hooks: ServerHooks, window: int, login_timeout_s: float
    ) -> None:
        def conn(handler: _SshProtocol) -> SshConnection:
            return SshConnection(
                client=False,
                handler=handler,
                version=SERVER_VERSION,
                host_key=host_key.key,
                kex_algorithms=KEX_ALGS,
                ciphers=ENCRYPTION_ALGS,
            )

        super().__init__(conn, window)
        self.hooks = hooks
        self._login_timer = self.loop.call_later(login_timeout_s, self._login_timeout)

    def _login_timeout(self) -> None:
        if not self.ready.done():
            self.error = TunnelError("SSH login did not finish in time")
            self.conn.disconnect(DISCONNECT_BY_APPLICATION, "login timeout")
            self._fail(self.error)

    def ssh_ready(self) -> None:
        self._login_timer.cancel()
        super().ssh_ready()

    def handle_request(self, name: str, payload: bytes) -> None:
        if name == CONFIG_REQUEST:
            # Binding listeners is asynchronous; later requests wait their turn.
            self._request_busy = True
            self.tasks.spawn(self._answer(name, self.hooks.on_config, payload), name="ssh-config")
        elif name == DESCRIBE_REQUEST:
            # Like config: it writes to the portal's database in a worker thread.
            hook = getattr(self.hooks, "on_describe", None)
            self._request_busy = True
            self.tasks.spawn(self._answer(name, hook, payload), name="ssh-describe")
        elif name == DRAIN_REQUEST:
            self.conn.reply_global(self.hooks.on_drain())
        else:
            super().handle_request(name, payload)

    async def _answer(
        self,
        name: str,
        hook: Callable[[bytes], Awaitable[str | None]] | None,
        payload: bytes,
    ) -> None:
        try:
            error = f"{name} is not handled here" if hook is None else await hook(payload)
        except Exception as exc:  # a bug must not leave the client hanging
            log.exception("%s handler failed", name)
            error = f"internal error handling {name}: {exc}"
        if not self.conn.closed:
            self.conn.reply_global(error is None, (error or "").encode())
        self._request_busy = False
        self._serve_requests()

    def on_lost(self, exc: BaseException | None) -> None:
        self._login_timer.cancel()
        self.hooks.on_lost(exc)


class _ClientProtocol(_SshProtocol):
    def __init__(
        self,
        dialer: Callable[[str], Awaitable[Any]],
        window: int,
        username: str,
        password: str,
        auth_methods: tuple[str, ...],
        early: EarlyOpen | None = None,
        host_key_check: Callable[[bytes], str | None] | None = None,
    ) -> None:
        def conn(handler: _SshProtocol) -> SshConnection:
            return SshConnection(
                client=True,
                host_key_check=host_key_check,
                handler=handler,
                version=CLIENT_VERSION,
                username=username,
                password=password,
                auth_methods=auth_methods,
                kex_algorithms=KEX_ALGS,
                ciphers=ENCRYPTION_ALGS,
            )

        super().__init__(conn, window)
        self.dialer = dialer
        self.early = early

    def ssh_channel_open(self, chan_id: int, kind: bytes, extra: bytes) -> None:
        if kind != CHANNEL_TYPE:
            self.conn.reject_channel(
                chan_id, OPEN_UNKNOWN_CHANNEL_TYPE, f"unknown channel type {kind[:40]!r}"
            )
            return
        target = extra.decode("utf-8", "replace")
        early = self.early
        if early is not None:
            try:
                started = early(target)
            except Exception:
                log.exception("early open failed for %s", target)
                started = None
            if started is not None:
                # Confirmed now, dialled meanwhile (see EarlyOpen).
                session, dialing = started
                self.conn.accept_channel(
                    chan_id, self.window, DEFAULT_MAX_PACKET_BYTES, EARLY_OPEN_MARK
                )
                self.attach(chan_id, session)
                dialing.add_done_callback(lambda outcome: self._dialled(chan_id, outcome))
                return
        self.tasks.spawn(self._dial(chan_id, target), name=f"ssh-dial-{chan_id}")

    def _dialled(self, chan_id: int, outcome: asyncio.Future[Any]) -> None:
        exc = outcome.exception()
        if exc is None:
            return
        if isinstance(exc, ChannelOpenFailed):
            reason = exc.reason or str(exc)
        else:
            log.error("dialer failed for channel %d", chan_id, exc_info=exc)
            reason = f"internal error: {exc}"
        chan = self.channels.get(chan_id)
        if chan is None or chan.closed or self.conn.closed:
            return
        # Nothing reached the endpoint: the gateway may give the app
        # connection, with what it sent, to another connector.
        with contextlib.suppress(SshLocalError):  # the gateway closed it meanwhile
            self.conn.send_channel_request(
                chan_id, DIAL_FAILED_REQUEST, string(reason.encode()[:1024])
            )
        chan.close()
        self.flush_now()

    async def _dial(self, chan_id: int, target: str) -> None:
        try:
            session = await self.dialer(target)
        except ChannelOpenFailed as exc:
            code = (
                OPEN_ADMINISTRATIVELY_PROHIBITED
                if exc.code == ChannelOpenFailed.ADMINISTRATIVELY_PROHIBITED
                else OPEN_CONNECT_FAILED
            )
            self._refuse(chan_id, exc.reason or str(exc), code)
            return
        except Exception as exc:
            log.exception("dialer failed for %s", target)
            self._refuse(chan_id, f"internal error: {exc}")
            return
        if self.conn.closed:
            session.connection_lost(ConnectionResetError("SSH connection closed"))
            return
        self.conn.accept_channel(chan_id, self.window, DEFAULT_MAX_PACKET_BYTES)
        self.attach(chan_id, session)
        # The confirmation leaves now, not one loop iteration later: the
        # app's first bytes wait for it at the gateway.
        self.flush_now()

    def _refuse(self, chan_id: int, reason: str, code: int = OPEN_CONNECT_FAILED) -> None:
        if not self.conn.closed:
            self.conn.reject_channel(chan_id, code, reason)


# -- opening channels with callbacks -------------------------------------------

#: Called once with the outcome of a channel open: (session, None) or (None, error).
OpenCallback = Callable[[Any, BaseException | None], None]


def _report(on_done: OpenCallback, session: Any, exc: BaseException | None) -> None:
    # The callback runs inside a socket read; its bug must not end the tunnel.
    try:
        on_done(session, exc)
    except Exception:
        log.exception("channel open callback failed")


class OpenHandle:
    """A channel open in flight (:meth:`SshTunnel.begin_open`)."""

    __slots__ = ("_proto", "chan_id")

    def __init__(self, proto: _SshProtocol, chan_id: int) -> None:
        self._proto = proto
        self.chan_id = chan_id

    def abandon(self) -> None:
        """Give up waiting: the callback is not called any more; a channel the
        peer confirms later is closed at once, and one that already opened is
        closed now (its session sees ``connection_lost``)."""
        proto = self._proto
        if proto.opening.pop(self.chan_id, None) is not None:
            proto.conn.close_channel(self.chan_id)
            proto.flush_now()
        elif self.chan_id in proto.channels:
            proto.channels[self.chan_id].close()


# -- the tunnel object both sides use -----------------------------------------


class SshTunnel:
    """One SSH connection inside a WebSocket, as the gateway or connector sees it."""

    def __init__(self, proto: _SshProtocol, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self._proto = proto
        self._window = window_bytes

    @property
    def peer_version(self) -> str:
        return (self._proto.conn.peer_version or b"").decode("ascii", "replace")

    @property
    def server_fingerprint(self) -> str:
        blob = self._proto.conn.peer_host_key
        return chisel_fingerprint(blob) if blob else ""

    @property
    def cipher(self) -> str:
        """The negotiated cipher we send with (for logs and tests)."""
        return self._proto.conn.cipher_names[0]

    def begin_open(
        self, extra: bytes, session_factory: Callable[[], Any], on_done: OpenCallback
    ) -> OpenHandle:
        """Ask for a ``chisel`` channel with ``extra`` data, now, without a task.

        The request is written at once (or with the current read's replies).
        ``on_done(session, None)`` is called as soon as the peer confirms,
        inside the read that brought the confirmation and right after
        ``session_factory()``'s session saw ``connection_made``, so what it
        writes leaves with that read's replies; ``on_done(None, exc)`` with
        :class:`ChannelOpenFailed` when the peer refuses or the connection
        is lost. Exactly one of the two, exactly once, unless the open is
        abandoned first (:meth:`OpenHandle.abandon`).

        Raises:
            ChannelOpenFailed: the connection is closing, not ready, or has
                too many channels (``on_done`` is not called).
        """
        proto = self._proto
        try:
            chan_id = proto.conn.open_channel(
                CHANNEL_TYPE, extra, self._window, DEFAULT_MAX_PACKET_BYTES
            )
        except SshLocalError as exc:  # closing, not ready, too many channels
            raise ChannelOpenFailed(f"channel failed: {exc}", reason=str(exc), code=0) from None
        proto.opening[chan_id] = (on_done, session_factory)
        proto.flush_now()
        return OpenHandle(proto, chan_id)

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
        fut: asyncio.Future[Any] = self._proto.loop.create_future()

        def settle(session: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(session)
            else:
                fut.set_exception(exc)

        handle = self.begin_open(extra, session_factory, settle)
        try:
            if timeout_s is None:
                return await fut
            async with asyncio.timeout(timeout_s):
                return await fut
        except (TimeoutError, asyncio.CancelledError):
            handle.abandon()
            raise

    async def request(self, name: str, payload: bytes = b"") -> tuple[bool, bytes]:
        """Send a global request (``config``, ``ping``) and wait for the reply.

        Raises:
            TunnelError: the connection closed before a reply came.
        """
        proto = self._proto
        try:
            proto.conn.global_request(name, payload, True)
        except SshLocalError as exc:
            raise TunnelError(f"SSH request {name!r} failed: {exc}") from None
        fut: asyncio.Future[tuple[bool, bytes]] = proto.loop.create_future()
        proto.replies.append(fut)
        return await fut

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
        proto = self._proto
        if not proto.conn.closed:
            proto.conn.disconnect(DISCONNECT_BY_APPLICATION, "closed by application")
        proto._flush()
        if proto.transport is not None:
            proto.transport.close()

    def abort(self) -> None:
        if self._proto.transport is not None:
            self._proto.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._proto.closed)


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
    proto = _ServerProtocol(host_key, hooks, window_bytes, login_timeout_s)
    transport_attach(proto)
    return SshTunnel(proto, window_bytes)


async def connect_tunnel(
    transport_attach: Callable[[asyncio.Protocol], Awaitable[asyncio.BaseTransport]],
    dialer: Callable[[str], Awaitable[Any]],
    *,
    early: EarlyOpen | None = None,
    fingerprint: str = "",
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

    ``fingerprint`` pins the gateway's host key (chisel's base64 SHA-256):
    another key ends the handshake before user authentication, so no
    password goes to the wrong server.

    ``early`` (see :data:`EarlyOpen`) confirms channels before their dial,
    for gateways that take a failed dial back (:data:`DIAL_FAILED`).

    Raises:
        TunnelError: the SSH handshake failed or timed out.
    """
    check = None
    refused: list[str] = []
    if fingerprint:

        def check(blob: bytes) -> str | None:
            got = chisel_fingerprint(blob)
            if same_fingerprint(fingerprint, got):
                return None
            refused.append(
                f"gateway host key fingerprint is {got}, expected {fingerprint}: "
                "wrong gateway, or its key changed"
            )
            return refused[-1]

    proto = _ClientProtocol(dialer, window_bytes, username, password, auth_methods, early, check)
    try:
        async with asyncio.timeout(timeout_s):
            await transport_attach(proto)
            await proto.ready
    except TimeoutError:
        if proto.transport is not None:
            proto.transport.abort()
        raise TunnelError(f"SSH handshake did not finish within {timeout_s:g}s") from None
    except (OSError, SshRemoteError, SshLocalError) as exc:
        if proto.transport is not None:
            proto.transport.abort()
        if refused:  # the pin, not the protocol: said as plainly as before
            raise HandshakeError(refused[0]) from None
        raise TunnelError(f"SSH handshake failed: {exc}") from None
    return SshTunnel(proto, window_bytes)


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
