"""User authentication and the connection protocol (RFC 4252, RFC 4254).

:class:`SshConnection` adds to the transport what chisel-v3 needs:

- authentication as the Go peers do it. Server: ``none`` succeeds for any
  user name (the empty one included), so does ``password`` with any
  password; the tunnel's credential is the token checked before the
  WebSocket upgrade. Client: ``none`` first, then, as the server's failure
  lists them, ``publickey`` (only with a ``client_key``) and ``password``.
- global requests with their payload raw (chisel's ``config`` carries JSON
  that is not an SSH string, and its failure reply carries the error text);
  replies are matched in order by the caller.
- channels with flow control: each side's window, the peer's largest
  packet, EOF and CLOSE as half and full close, open failures with reasons.

Events go to a :class:`SshHandler` synchronously, from inside
``receive_data``; the handler may call back into the connection. The data
path is one ``struct`` parse, one dict lookup and one callback per packet.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from qanat.wire.ssh.codec import Reader, boolean, string, u32
from qanat.wire.ssh.errors import (
    DISCONNECT_HOST_KEY_NOT_VERIFIABLE,
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    DISCONNECT_SERVICE_NOT_AVAILABLE,
    SshLocalError,
    SshRemoteError,
)
from qanat.wire.ssh.hostkeys import EcdsaKey
from qanat.wire.ssh.kex import CIPHERS, KEX_ALGORITHMS
from qanat.wire.ssh.transport import (
    MSG_EXT_INFO,
    MSG_SERVICE_ACCEPT,
    MSG_SERVICE_REQUEST,
    SshLimits,
    Transport,
)

MSG_USERAUTH_REQUEST = 50
MSG_USERAUTH_FAILURE = 51
MSG_USERAUTH_SUCCESS = 52
MSG_USERAUTH_BANNER = 53
MSG_USERAUTH_PK_OK = 60
MSG_GLOBAL_REQUEST = 80
MSG_REQUEST_SUCCESS = 81
MSG_REQUEST_FAILURE = 82
MSG_CHANNEL_OPEN = 90
MSG_CHANNEL_OPEN_CONFIRMATION = 91
MSG_CHANNEL_OPEN_FAILURE = 92
MSG_CHANNEL_WINDOW_ADJUST = 93
MSG_CHANNEL_DATA = 94
MSG_CHANNEL_EXTENDED_DATA = 95
MSG_CHANNEL_EOF = 96
MSG_CHANNEL_CLOSE = 97
MSG_CHANNEL_REQUEST = 98
MSG_CHANNEL_SUCCESS = 99
MSG_CHANNEL_FAILURE = 100

OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
OPEN_UNKNOWN_CHANNEL_TYPE = 3
OPEN_RESOURCE_SHORTAGE = 4

_II = struct.Struct(">II")
_DATA = struct.Struct(">BII")
_ADJUST = struct.Struct(">BII")
_MASK32 = 0xFFFFFFFF

# Channel states.
_OPENING_OUT = 0  # we sent CHANNEL_OPEN
_OPENING_IN = 1  # the peer sent CHANNEL_OPEN, the handler has not answered
_OPEN = 2


class SshHandler(Protocol):
    """What an :class:`SshConnection` reports. Every method runs inside
    ``receive_data`` (or a send call) and must not block."""

    def ssh_ready(self) -> None:
        """Authentication succeeded; channels and global requests may flow."""

    def ssh_global_request(self, name: str, payload: bytes, want_reply: bool) -> None:
        """The peer's global request; answer with ``reply_global`` if ``want_reply``."""

    def ssh_global_reply(self, ok: bool, payload: bytes) -> None:
        """The reply to our oldest unanswered global request."""

    def ssh_channel_open(self, chan_id: int, kind: bytes, extra: bytes) -> None:
        """The peer opens a channel; answer with accept_channel/reject_channel."""

    def ssh_channel_open_result(self, chan_id: int, ok: bool, code: int, text: str) -> None:
        """Our open_channel was confirmed (ok; ``text`` is what followed the
        confirmation's fields, as text, usually empty) or refused (code, text)."""

    def ssh_channel_data(self, chan_id: int, data: bytes) -> None: ...

    def ssh_channel_eof(self, chan_id: int) -> None: ...

    def ssh_channel_closed(self, chan_id: int) -> None:
        """The channel is gone (both CLOSEs exchanged); its id may be reused."""

    def ssh_channel_writable(self, chan_id: int) -> None:
        """Data held for a closed window went out; the writer may resume."""

    def ssh_channel_request(self, chan_id: int, name: str, payload: bytes) -> None:
        """The peer's channel request (one wanting a reply was refused already)."""


class BaseHandler:
    """A handler that does nothing (refuses opens and requests): subclass it."""

    conn: SshConnection

    def ssh_ready(self) -> None:
        pass

    def ssh_global_request(self, name: str, payload: bytes, want_reply: bool) -> None:
        if want_reply:
            self.conn.reply_global(False)

    def ssh_global_reply(self, ok: bool, payload: bytes) -> None:
        pass

    def ssh_channel_open(self, chan_id: int, kind: bytes, extra: bytes) -> None:
        self.conn.reject_channel(chan_id, OPEN_UNKNOWN_CHANNEL_TYPE, "no channels here")

    def ssh_channel_open_result(self, chan_id: int, ok: bool, code: int, text: str) -> None:
        pass

    def ssh_channel_data(self, chan_id: int, data: bytes) -> None:
        pass

    def ssh_channel_eof(self, chan_id: int) -> None:
        pass

    def ssh_channel_closed(self, chan_id: int) -> None:
        pass

    def ssh_channel_writable(self, chan_id: int) -> None:
        pass

    def ssh_channel_request(self, chan_id: int, name: str, payload: bytes) -> None:
        pass


class Channel:
    """One channel's bookkeeping (ours: ``local``; the peer's: ``remote``)."""

    __slots__ = (
        "close_pending",
        "close_recv",
        "close_sent",
        "eof_pending",
        "eof_recv",
        "eof_sent",
        "full",
        "local",
        "paused",
        "pending",
        "pending_bytes",
        "recv_initial",
        "recv_max",
        "recv_window",
        "remote",
        "send_max",
        "send_window",
        "state",
    )

    def __init__(self, local: int, state: int, window: int, max_packet: int) -> None:
        self.local = local
        self.remote = 0
        self.state = state
        self.send_window = 0
        self.send_max = 0
        self.recv_window = window
        self.recv_initial = window
        self.recv_max = max_packet
        self.pending: deque[memoryview] = deque()
        self.pending_bytes = 0
        self.paused = False
        self.full = False
        self.eof_pending = self.eof_sent = self.eof_recv = False
        self.close_pending = self.close_sent = self.close_recv = False


class SshConnection(Transport):
    """A whole SSH connection, client or server, without I/O.

    Args:
        client: our role.
        handler: receives events (see :class:`SshHandler`).
        version: our version line without CR LF (``SSH-2.0-...`` or chisel's).
        host_key: the server's signing key (server only).
        username, password: what the client authenticates with.
        client_key: an optional key for ``publickey`` user authentication.
        host_key_check: client only: called with the server's host key blob
            once its signature is verified, before anything is sent under
            the new keys (user authentication included); a returned text
            refuses the key and ends the connection with it.
        limits: bounds (see :class:`SshLimits`).
        pending_high_bytes: per channel, held data above which
            ``send_data`` returns True ("pause the writer").

    Raises (constructor): SshLocalError for a bad version line or a server
    without host key.
    """

    def __init__(
        self,
        *,
        client: bool,
        handler: SshHandler,
        version: bytes,
        host_key: EcdsaKey | None = None,
        username: str = "",
        password: str = "",
        client_key: EcdsaKey | None = None,
        auth_methods: tuple[str, ...] = ("none", "publickey", "password"),
        limits: SshLimits | None = None,
        pending_high_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
        kex_algorithms: tuple[str, ...] = KEX_ALGORITHMS,
        ciphers: tuple[str, ...] = CIPHERS,
        host_key_check: Callable[[bytes], str | None] | None = None,
    ) -> None:
        super().__init__(
            client=client,
            version=version,
            host_key=host_key,
            limits=limits,
            clock=clock,
            kex_algorithms=kex_algorithms,
            ciphers=ciphers,
        )
        self.handler = handler
        self._host_key_check = host_key_check
        self.username = username
        self._password = password
        self._client_key = client_key
        self._auth_methods = auth_methods
        self._pending_high = pending_high_bytes
        self.authenticated = False
        self.auth_user = ""
        self.auth_method = ""
        self._auth_tried: list[str] = []
        self._channels: dict[int, Channel] = {}
        self._next_id = 0
        self._replies_expected = 0
        self._replies_owed = 0

    # -- transport hooks ----------------------------------------------------------

    def _check_host_key(self, blob: bytes) -> None:
        check = self._host_key_check
        if check is not None:
            problem = check(blob)
            if problem:
                raise SshRemoteError(problem, DISCONNECT_HOST_KEY_NOT_VERIFIABLE)

    def _after_kex(self, first: bool) -> None:
        if first and self.client:
            self._emit(bytes((MSG_SERVICE_REQUEST,)) + string(b"ssh-userauth"))
        # Channel data held while the window was open but keys were changing
        # went out with the deferred messages; nothing else to do.

    def _service_message(self, msg: int, payload: bytes) -> None:
        if msg == MSG_EXT_INFO:
            return  # tolerated, nothing we use (we offer no ext-info-c)
        name = Reader(payload, 1).string(64)
        if msg == MSG_SERVICE_REQUEST and not self.client:
            if name != b"ssh-userauth" or self.authenticated:
                raise SshRemoteError(
                    f"service {name!r} is not available", DISCONNECT_SERVICE_NOT_AVAILABLE
                )
            self.send_payload(bytes((MSG_SERVICE_ACCEPT,)) + string(name))
        elif msg == MSG_SERVICE_ACCEPT and self.client and not self._auth_tried:
            self._next_auth(("none", "publickey", "password"))
        else:
            raise SshRemoteError(f"unexpected service message {msg}")

    # -- authentication ----------------------------------------------------------

    def _auth_head(self, method: str) -> bytes:
        return (
            bytes((MSG_USERAUTH_REQUEST,))
            + string(self.username.encode())
            + string(b"ssh-connection")
            + string(method.encode())
        )

    def _send_auth(self, method: str, rest: bytes) -> None:
        self.send_payload(self._auth_head(method) + rest)

    def _client_auth(self, msg: int, payload: bytes) -> None:
        if msg == MSG_USERAUTH_SUCCESS:
            self.authenticated = True
            self.auth_method = self._auth_tried[-1] if self._auth_tried else ""
            self.handler.ssh_ready()
        elif msg == MSG_USERAUTH_FAILURE:
            self._next_auth(Reader(payload, 1).namelist())
        elif msg in (MSG_USERAUTH_BANNER, MSG_USERAUTH_PK_OK):
            pass
        else:
            raise SshRemoteError(f"message {msg} before user authentication finished")

    def _next_auth(self, offered: tuple[str, ...]) -> None:
        """Try the next of our methods that the server offers, in our order."""
        key = self._client_key
        for method in self._auth_methods:
            if method in self._auth_tried or method not in offered:
                continue
            if method == "none":
                self._auth_tried.append(method)
                self._send_auth("none", b"")
                return
            if method == "publickey" and key is not None:
                self._auth_tried.append(method)
                alg = string(key.algorithm.encode())
                blob = string(key.public_blob)
                signed = (
                    string(self.session_id) + self._auth_head("publickey") + b"\x01" + alg + blob
                )
                self._send_auth("publickey", b"\x01" + alg + blob + string(key.sign(signed)))
                return
            if method == "password":
                self._auth_tried.append(method)
                self._send_auth("password", b"\x00" + string(self._password.encode()))
                return
        raise SshRemoteError(
            "ssh: unable to authenticate, attempted methods "
            f"[{' '.join(self._auth_tried)}], no supported methods remain "
            f"(the server offers [{' '.join(offered)}])",
            DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
        )

    def _server_auth(self, msg: int, payload: bytes) -> None:
        if msg != MSG_USERAUTH_REQUEST:
            raise SshRemoteError(f"message {msg} before user authentication finished")
        r = Reader(payload, 1)
        user = r.text(1024)
        service = r.string(64)
        method = r.text(64)
        if service != b"ssh-connection":
            raise SshRemoteError(f"service {service!r} is not available", 7)
        if method in ("none", "password"):
            self.authenticated = True
            self.auth_user = user
            self.auth_method = method
            self.send_payload(bytes((MSG_USERAUTH_SUCCESS,)))
            self.handler.ssh_ready()
        else:
            self.send_payload(
                bytes((MSG_USERAUTH_FAILURE,)) + string(b"none,password") + boolean(False)
            )

    # -- dispatch ---------------------------------------------------------------

    def _dispatch(self, body: bytes, end: int) -> None:
        # The data path: one parse, one lookup, one callback.
        if body[1] == MSG_CHANNEL_DATA and not self._gate:
            recipient, n = _II.unpack_from(body, 2)
            chan = self._channels.get(recipient)
            if chan is None or chan.state != _OPEN or n + 10 != end or not self.authenticated:
                self._bad_data(chan, n, end)
                return
            if n > chan.recv_window or n > chan.recv_max:
                raise SshRemoteError(
                    f"peer sent {n} bytes on channel {recipient} with a window of "
                    f"{chan.recv_window} and packets of at most {chan.recv_max}"
                )
            chan.recv_window -= n
            if not chan.close_sent:
                self.handler.ssh_channel_data(recipient, body[10:end])
                if chan.recv_window * 2 < chan.recv_initial and not chan.paused:
                    self._adjust(chan)
            return
        Transport._dispatch(self, body, end)

    def _bad_data(self, chan: Channel | None, n: int, end: int) -> None:
        if not self.authenticated:
            raise SshRemoteError("channel data before user authentication finished")
        if chan is None or chan.state != _OPEN:
            raise SshRemoteError("channel data for a channel that is not open")
        raise SshRemoteError(f"channel data of {n} bytes in a {end - 10}-byte field")

    def _connection_message(self, msg: int, body: bytes, end: int) -> None:
        payload = body[1:end]
        if not self.authenticated:
            if self.client:
                self._client_auth(msg, payload)
            else:
                self._server_auth(msg, payload)
            return
        if msg < 80:
            if msg == MSG_USERAUTH_REQUEST and not self.client:
                return  # RFC 4252 §5.1: ignored after success
            if msg == MSG_USERAUTH_BANNER:
                return
            raise SshRemoteError(f"authentication message {msg} after authentication")
        r = Reader(payload, 1)
        if msg == MSG_GLOBAL_REQUEST:
            name = r.text(256)
            want_reply = r.boolean()
            if want_reply:
                self._replies_owed += 1
            self.handler.ssh_global_request(name, r.rest(), want_reply)
        elif msg in (MSG_REQUEST_SUCCESS, MSG_REQUEST_FAILURE):
            if self._replies_expected <= 0:
                raise SshRemoteError("global request reply without a request")
            self._replies_expected -= 1
            self.handler.ssh_global_reply(msg == MSG_REQUEST_SUCCESS, r.rest())
        elif msg == MSG_CHANNEL_OPEN:
            self._on_open(r)
        elif MSG_CHANNEL_OPEN_CONFIRMATION <= msg <= MSG_CHANNEL_FAILURE:
            self._channel_message(msg, r)
        else:
            self._unimplemented()

    # -- global requests ----------------------------------------------------------

    def global_request(self, name: str, payload: bytes = b"", want_reply: bool = True) -> None:
        """Send a global request; its reply comes to ``ssh_global_reply``, in order."""
        self._require_ready()
        self.send_payload(
            bytes((MSG_GLOBAL_REQUEST,)) + string(name.encode()) + boolean(want_reply) + payload
        )
        if want_reply:
            self._replies_expected += 1

    def reply_global(self, ok: bool, payload: bytes = b"") -> None:
        """Answer the peer's oldest global request that wanted a reply."""
        if self._replies_owed <= 0:
            raise SshLocalError("no global request is waiting for a reply")
        self._replies_owed -= 1
        if not self.closed:
            self.send_payload(
                bytes((MSG_REQUEST_SUCCESS if ok else MSG_REQUEST_FAILURE,)) + payload
            )

    def _require_ready(self) -> None:
        if self.closed:
            raise SshLocalError("the SSH connection is closed")
        if not self.authenticated:
            raise SshLocalError("the SSH connection is not authenticated yet")

    # -- channels: opening ---------------------------------------------------------

    def _new_id(self) -> int:
        channels = self._channels
        if len(channels) >= self.limits.max_channels:
            raise SshLocalError(f"too many channels (limit {self.limits.max_channels})")
        chan_id = self._next_id
        while chan_id in channels:
            chan_id = (chan_id + 1) & _MASK32
        self._next_id = (chan_id + 1) & _MASK32
        return chan_id

    def open_channel(self, kind: bytes, extra: bytes, window: int, max_packet: int) -> int:
        """Open a channel; the answer comes to ``ssh_channel_open_result``.

        Raises:
            SshLocalError: not ready, closed, or too many channels.
        """
        self._require_ready()
        chan_id = self._new_id()
        self._channels[chan_id] = Channel(chan_id, _OPENING_OUT, window, max_packet)
        self.send_payload(
            bytes((MSG_CHANNEL_OPEN,)) + string(kind) + u32(chan_id) + u32(window)
            + u32(max_packet) + extra
        )  # fmt: skip
        return chan_id

    def _on_open(self, r: Reader) -> None:
        kind = r.string(256)
        sender = r.u32()
        window = r.u32()
        max_packet = r.u32()
        extra = r.rest()
        if len(self._channels) >= self.limits.max_channels:
            self._open_failure(sender, OPEN_RESOURCE_SHORTAGE, "too many channels")
            return
        chan_id = self._new_id()
        chan = Channel(chan_id, _OPENING_IN, 0, 0)
        chan.remote = sender
        chan.send_window = window
        chan.send_max = max(1, max_packet)
        self._channels[chan_id] = chan
        self.handler.ssh_channel_open(chan_id, kind, extra)

    def _open_failure(self, remote: int, code: int, text: str) -> None:
        self.send_payload(
            bytes((MSG_CHANNEL_OPEN_FAILURE,)) + u32(remote) + u32(code)
            + string(text.encode()[:1024]) + string(b"")
        )  # fmt: skip

    def accept_channel(
        self, chan_id: int, window: int, max_packet: int, extra: bytes = b""
    ) -> None:
        """Confirm the peer's open; ``extra`` is the confirmation's
        channel-type specific data (RFC 4254 5.1), raw."""
        chan = self._channels.get(chan_id)
        if chan is None or chan.state != _OPENING_IN:
            raise SshLocalError(f"channel {chan_id} is not waiting to be accepted")
        chan.state = _OPEN
        chan.recv_window = chan.recv_initial = window
        chan.recv_max = max_packet
        if not self.closed:
            self.send_payload(
                bytes((MSG_CHANNEL_OPEN_CONFIRMATION,)) + u32(chan.remote) + u32(chan_id)
                + u32(window) + u32(max_packet) + extra
            )  # fmt: skip

    def reject_channel(self, chan_id: int, code: int, text: str) -> None:
        chan = self._channels.get(chan_id)
        if chan is None or chan.state != _OPENING_IN:
            raise SshLocalError(f"channel {chan_id} is not waiting to be accepted")
        del self._channels[chan_id]
        if not self.closed:
            self._open_failure(chan.remote, code, text)

    # -- channels: messages -----------------------------------------------------------

    def _channel_message(self, msg: int, r: Reader) -> None:
        chan_id = r.u32()
        chan = self._channels.get(chan_id)
        if chan is None:
            raise SshRemoteError(f"message {msg} for unknown channel {chan_id}")
        if msg == MSG_CHANNEL_OPEN_CONFIRMATION:
            if chan.state != _OPENING_OUT:
                raise SshRemoteError(f"channel {chan_id} confirmed twice")
            chan.remote = r.u32()
            chan.send_window = r.u32()
            chan.send_max = max(1, r.u32())
            chan.state = _OPEN
            if chan.close_pending:  # given up on before the answer came
                self._send_close(chan)
                return
            # What follows is channel-type specific (RFC 4254 5.1): for
            # chisel channels nothing, or qanat's early-open marker.
            extra = r.rest()[:256].decode("ascii", "replace")
            self.handler.ssh_channel_open_result(chan_id, True, 0, extra)
            return
        if msg == MSG_CHANNEL_OPEN_FAILURE:
            if chan.state != _OPENING_OUT:
                raise SshRemoteError(f"open failure for channel {chan_id}, which is open")
            code = r.u32()
            text = r.text(4096)
            del self._channels[chan_id]
            self.handler.ssh_channel_open_result(chan_id, False, code, text)
            return
        if chan.state != _OPEN:
            raise SshRemoteError(f"message {msg} for channel {chan_id}, which is not open")
        if msg == MSG_CHANNEL_WINDOW_ADJUST:
            chan.send_window = min(chan.send_window + r.u32(), _MASK32)
            if chan.pending or chan.eof_pending or chan.close_pending:
                self._flush(chan)
        elif msg == MSG_CHANNEL_EXTENDED_DATA:
            r.u32()
            n = len(r.string(chan.recv_max))
            if n > chan.recv_window:
                raise SshRemoteError(f"peer overran channel {chan_id}'s window")
            chan.recv_window -= n
            if chan.recv_window * 2 < chan.recv_initial and not chan.paused:
                self._adjust(chan)
        elif msg == MSG_CHANNEL_EOF:
            if not chan.eof_recv:
                chan.eof_recv = True
                if not chan.close_sent:
                    self.handler.ssh_channel_eof(chan_id)
        elif msg == MSG_CHANNEL_CLOSE:
            chan.close_recv = True
            if not chan.close_sent:
                chan.pending.clear()
                chan.pending_bytes = 0
                self._send_close(chan)
            del self._channels[chan_id]
            self.handler.ssh_channel_closed(chan_id)
        elif msg == MSG_CHANNEL_REQUEST:
            name = r.string(256).decode("ascii", "replace")
            if r.boolean() and not chan.close_sent:
                self.send_payload(bytes((MSG_CHANNEL_FAILURE,)) + u32(chan.remote))
            if not chan.close_sent:
                self.handler.ssh_channel_request(chan_id, name, r.rest())
        # CHANNEL_SUCCESS / CHANNEL_FAILURE: we send channel requests without
        # asking for a reply only.

    # -- channels: sending --------------------------------------------------------------

    def _open_chan(self, chan_id: int) -> Channel:
        chan = self._channels.get(chan_id)
        if chan is None or chan.state != _OPEN:
            raise SshLocalError(f"channel {chan_id} is not open")
        if chan.eof_sent or chan.eof_pending or chan.close_sent or chan.close_pending:
            raise SshLocalError(f"channel {chan_id} is closed for sending")
        return chan

    def send_data(self, chan_id: int, data: bytes) -> bool:
        """Send channel data, holding what the peer's window does not allow.

        Returns True when the held data passed ``pending_high_bytes``: the
        writer should pause until ``ssh_channel_writable``.

        Raises:
            SshLocalError: the channel is not open for sending, or more than
                ``max_pending_bytes`` would be held.
        """
        chan = self._open_chan(chan_id)
        if self.closed:
            raise SshLocalError("the SSH connection is closed")
        n = len(data)
        if not chan.pending and n <= chan.send_window and n <= chan.send_max:
            chan.send_window -= n
            self.send_payload(_DATA.pack(MSG_CHANNEL_DATA, chan.remote, n), data)
            return False
        if chan.pending_bytes + n > self.limits.max_pending_bytes:
            raise SshLocalError(
                f"channel {chan_id}: more than {self.limits.max_pending_bytes} bytes waiting "
                "for the peer's window"
            )
        # Held as a view: a 256 KiB read leaves in 32 KiB packets, and slicing
        # bytes copied the rest of the read at every packet (about four times
        # the read in copies; a memoryview slice copies nothing). A caller's
        # mutable buffer is copied once, since it may be reused.
        chan.pending.append(memoryview(data if isinstance(data, bytes) else bytes(data)))
        chan.pending_bytes += n
        self._flush(chan)
        if chan.pending_bytes > self._pending_high:
            chan.full = True
        return chan.full

    def _flush(self, chan: Channel) -> None:
        pending = chan.pending
        while pending and chan.send_window > 0:
            data = pending[0]
            n = min(len(data), chan.send_window, chan.send_max)
            if n == len(data):
                pending.popleft()
            else:
                pending[0] = data[n:]
                data = data[:n]
            chan.send_window -= n
            chan.pending_bytes -= n
            self.send_payload(_DATA.pack(MSG_CHANNEL_DATA, chan.remote, n), data)
        if pending:
            return
        if chan.eof_pending:
            chan.eof_pending = False
            self._send_eof(chan)
        if chan.close_pending:
            chan.close_pending = False
            self._send_close(chan)
        if chan.full:
            chan.full = False
            self.handler.ssh_channel_writable(chan.local)

    def pending_bytes(self, chan_id: int) -> int:
        chan = self._channels.get(chan_id)
        return chan.pending_bytes if chan is not None else 0

    def send_channel_request(self, chan_id: int, name: str, payload: bytes = b"") -> None:
        """A channel request that wants no reply (an extension's notice), sent
        now, ahead of data held for the window.

        Raises:
            SshLocalError: the channel is not open for sending.
        """
        chan = self._open_chan(chan_id)
        if not self.closed:
            self.send_payload(
                bytes((MSG_CHANNEL_REQUEST,)) + u32(chan.remote)
                + string(name.encode("ascii")) + boolean(False) + payload
            )  # fmt: skip

    def send_eof(self, chan_id: int) -> None:
        """Half-close: no more data from us (after what is held)."""
        chan = self._channels.get(chan_id)
        if chan is None or chan.state != _OPEN or chan.eof_sent or chan.eof_pending:
            return
        if chan.close_sent or chan.close_pending:
            return
        if chan.pending:
            chan.eof_pending = True
        else:
            self._send_eof(chan)

    def _send_eof(self, chan: Channel) -> None:
        chan.eof_sent = True
        if not self.closed:
            self.send_payload(bytes((MSG_CHANNEL_EOF,)) + u32(chan.remote))

    def close_channel(self, chan_id: int, *, discard: bool = False) -> None:
        """Close a channel (after held data, unless ``discard``).

        ``ssh_channel_closed`` follows once the peer's CLOSE arrives. Closing
        a channel we opened that is not confirmed yet closes it on arrival.
        """
        chan = self._channels.get(chan_id)
        if chan is None or chan.close_sent:
            return
        if chan.state == _OPENING_IN:
            self.reject_channel(chan_id, OPEN_CONNECT_FAILED, "closed before it was accepted")
            return
        if chan.state == _OPENING_OUT:
            chan.close_pending = True  # sent when the confirmation comes
            return
        if chan.pending and not discard:
            chan.close_pending = True
            return
        chan.pending.clear()
        chan.pending_bytes = 0
        self._send_close(chan)

    def _send_close(self, chan: Channel) -> None:
        chan.close_sent = True
        chan.close_pending = False
        if not self.closed:
            # A CLOSE answering the peer's, or one after EOF both ways, only
            # frees the channel: nobody's bytes wait for it, so it may leave
            # with the next output (saves a write and a wake-up of the peer
            # per connection).
            lazy = chan.close_recv or (chan.eof_sent and chan.eof_recv)
            self.send_payload(bytes((MSG_CHANNEL_CLOSE,)) + u32(chan.remote), lazy=lazy)

    # -- channels: receiving flow control ----------------------------------------------------

    def _adjust(self, chan: Channel) -> None:
        grow = chan.recv_initial - chan.recv_window
        if grow > 0 and not chan.close_sent and not self.closed:
            chan.recv_window = chan.recv_initial
            self.send_payload(_ADJUST.pack(MSG_CHANNEL_WINDOW_ADJUST, chan.remote, grow))

    def pause_channel(self, chan_id: int) -> None:
        """Stop opening the peer's window for this channel (back-pressure)."""
        chan = self._channels.get(chan_id)
        if chan is not None:
            chan.paused = True

    def resume_channel(self, chan_id: int) -> None:
        chan = self._channels.get(chan_id)
        if chan is not None and chan.paused:
            chan.paused = False
            if chan.state == _OPEN and chan.recv_window * 2 < chan.recv_initial:
                self._adjust(chan)

    def channel_ids(self) -> list[int]:
        return list(self._channels)
