"""The SSH transport layer as a sans-IO state machine (RFC 4253).

:class:`Transport` turns received bytes into decrypted messages and
messages into wire bytes: version exchange, binary packets, key exchange
(initial and re-keying) and strict key exchange. It never touches a socket;
the caller feeds ``receive_data`` and sends what ``data_to_send`` returns.
The connection layer (:mod:`qanat.wire.ssh.connection`) builds on it.

States of one key exchange (``self._kex`` is not None from our KEXINIT sent
to both NEWKEYS done)::

    KEXINIT sent -- peer KEXINIT --> negotiated -- ECDH INIT/REPLY --> keys
    keys -- NEWKEYS sent + NEWKEYS received --> done (deferred messages go out)

Rules enforced (each violation is an :class:`SshRemoteError`):

- nothing but transport messages (1-49) from the peer while it is in a key
  exchange, and, before the first NEWKEYS, no connection message at all;
- strict kex (``kex-strict-*-v00@openssh.com``, both sides offered it):
  the peer's KEXINIT must be its first packet, any message other than the
  key exchange's own during the initial exchange is fatal, and sequence
  numbers restart at 0 after every NEWKEYS;
- a sequence number wrapping during the initial key exchange is fatal;
- a packet longer than ``max_packet_bytes``, a bad padding or a bad
  authentication tag ends the connection.

We start a re-key after ``rekey_bytes`` in either direction or
``rekey_interval_s`` (checked on each ``receive_data``) and whenever the
peer sends KEXINIT.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from qanat.wire.ssh import kex as kexmod
from qanat.wire.ssh.ciphers import PacketCipher, new_cipher
from qanat.wire.ssh.codec import Reader, string, u32
from qanat.wire.ssh.errors import (
    DISCONNECT_HOST_KEY_NOT_VERIFIABLE,
    DISCONNECT_PROTOCOL_ERROR,
    DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED,
    SshDisconnected,
    SshLocalError,
    SshRemoteError,
)
from qanat.wire.ssh.hostkeys import VERIFY_ALGORITHMS, EcdsaKey, key_algorithm, verify

MSG_DISCONNECT = 1
MSG_IGNORE = 2
MSG_UNIMPLEMENTED = 3
MSG_DEBUG = 4
MSG_SERVICE_REQUEST = 5
MSG_SERVICE_ACCEPT = 6
MSG_EXT_INFO = 7

_U32 = struct.Struct(">I")
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SshLimits:
    """Bounds on what a peer can make us hold; all have safe defaults.

    Attributes:
        max_packet_bytes: largest ``packet_length`` accepted (RFC 4253
            requires at least 35,000; OpenSSH sends up to 256 KiB).
        max_channels: channels open at once; further opens are refused.
        max_pending_bytes: per channel, data accepted from the caller but
            not yet sendable (the peer's window is closed); past it,
            ``send_data`` raises.
        max_deferred_bytes: messages held while a key exchange runs.
        max_version_bytes: the longest version line (and pre-version line).
        max_preamble_lines: lines a server may send before its version.
        rekey_bytes: re-key after this many bytes either way.
        rekey_interval_s: re-key after this much time.
    """

    max_packet_bytes: int = 256 * 1024
    max_channels: int = 4096
    max_pending_bytes: int = 8 * 1024 * 1024
    max_deferred_bytes: int = 64 * 1024 * 1024
    max_version_bytes: int = 255
    max_preamble_lines: int = 32
    rekey_bytes: int = 1 << 30
    rekey_interval_s: float = 3600.0


class _Kex:
    __slots__ = (
        "agreement",
        "ephemeral",
        "ignore_next",
        "ours",
        "peer",
        "recv_keys",
        "sent_newkeys",
    )

    def __init__(self, ours: bytes) -> None:
        self.ours = ours
        self.peer: kexmod.KexInit | None = None
        self.agreement: kexmod.Agreement | None = None
        self.ephemeral: kexmod.Ephemeral | None = None
        self.recv_keys: kexmod.DirectionKeys | None = None
        self.sent_newkeys = False
        self.ignore_next = False


class Transport:
    """Version exchange, packets and key exchange for one SSH connection."""

    def __init__(
        self,
        *,
        client: bool,
        version: bytes,
        host_key: EcdsaKey | None = None,
        limits: SshLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        kex_algorithms: tuple[str, ...] = kexmod.KEX_ALGORITHMS,
        ciphers: tuple[str, ...] = kexmod.CIPHERS,
    ) -> None:
        unknown = [a for a in kex_algorithms if a not in kexmod.KEX_ALGORITHMS] + [
            c for c in ciphers if c not in kexmod.CIPHERS
        ]
        if unknown or not kex_algorithms or not ciphers:
            raise SshLocalError(
                f"unsupported SSH algorithms {unknown} (supported: "
                f"{', '.join(kexmod.KEX_ALGORITHMS + kexmod.CIPHERS)})"
            )
        self._kex_algorithms = kex_algorithms
        self._ciphers = ciphers
        if not version.startswith(b"SSH-") or b"\n" in version or b"\r" in version:
            raise SshLocalError(f"invalid SSH version line {version!r}")
        if not client and host_key is None:
            raise SshLocalError("an SSH server needs a host key")
        self.client = client
        self.local_version = version
        self.peer_version: bytes | None = None
        self.host_key = host_key
        self.limits = limits or SshLimits()
        self._clock = clock
        #: Called when output is waiting that should leave soon, once until
        #: the next data_to_send() (the adapter schedules one write per
        #: event-loop iteration from it).
        self.on_output: Callable[[], None] = _nothing
        #: Called when the only output waiting may wait (a channel CLOSE
        #: that just frees the channel, see send_payload's ``lazy``): the
        #: adapter may send it with the next output or after a short delay.
        self.on_lazy_output: Callable[[], None] = _nothing
        self._urgent = False
        self._inbuf = bytearray()
        self._out: list[bytes] = [version + b"\r\n"]
        self._send: PacketCipher = PacketCipher()
        self._recv: PacketCipher = PacketCipher()
        self._sseq = 0
        self._rseq = 0
        self._rlen = -1
        self._preamble = 0
        self.session_id = b""
        self.peer_host_key = b""
        self._kex: _Kex | None = None
        #: The peer is in a key exchange (its KEXINIT seen, its NEWKEYS not):
        #: only transport messages may come. True until the first NEWKEYS.
        self._gate = True
        self._initial = True
        self.strict = False
        self.cipher_names = ("none", "none")
        self.kex_name = ""
        self.kex_count = 0
        self._deferred: list[tuple[bytes, bytes | memoryview]] = []
        self._deferred_bytes = 0
        self._sbytes = 0
        self._rbytes = 0
        self._kex_time = clock()
        self._pending_send: kexmod.DirectionKeys | None = None
        self.closed = False
        self.error: Exception | None = None

    # -- bytes in, bytes out -----------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Wire bytes produced since the last call, as chunks for ``writelines``."""
        out, self._out = self._out, []
        self._urgent = False
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; handler callbacks run from here.

        Raises:
            SshRemoteError: the peer broke the protocol (or disconnected).
                A DISCONNECT for it is already in ``data_to_send()``, and
                the connection is closed.
        """
        if self.closed:
            return
        self._inbuf += data
        try:
            if self.peer_version is None and not self._read_version():
                return
            self._read_packets()
            if (
                self._kex is None
                and not self.closed
                and (
                    self._rbytes > self.limits.rekey_bytes
                    or self._clock() - self._kex_time > self.limits.rekey_interval_s
                )
            ):
                self._start_kex()
        except SshRemoteError as exc:
            self._fail(exc)
            raise

    def disconnect(self, code: int = 11, text: str = "") -> None:
        """Send SSH_MSG_DISCONNECT and stop; later input is ignored."""
        if self.closed:
            return
        self._emit(
            bytes((MSG_DISCONNECT,)) + u32(code) + string(text.encode()[:1024]) + string(b"")
        )
        self.closed = True

    def _fail(self, exc: SshRemoteError) -> None:
        self.error = exc
        if not self.closed:
            if isinstance(exc, SshDisconnected):
                self.closed = True
            elif self.peer_version is not None:
                self.disconnect(exc.code, str(exc))
            else:
                self.closed = True

    # -- version exchange -------------------------------------------------------------

    def _read_version(self) -> bool:
        buf = self._inbuf
        limit = self.limits.max_version_bytes
        while True:
            idx = buf.find(b"\n", 0, limit + 2)
            if idx < 0:
                if len(buf) > limit + 1:
                    raise SshRemoteError(
                        "peer sent no SSH version line (not an SSH stream)",
                        DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED,
                    )
                return False
            line = bytes(buf[:idx]).rstrip(b"\r")
            del buf[: idx + 1]
            if line.startswith(b"SSH-"):
                break
            # RFC 4253 §4.2: a server may send other lines first; a client may not.
            self._preamble += 1
            if not self.client or self._preamble > self.limits.max_preamble_lines:
                raise SshRemoteError(
                    f"not an SSH version line: {line[:40]!r}",
                    DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED,
                )
        if not line.startswith((b"SSH-2.0-", b"SSH-1.99-", b"SSH-chisel-")):
            raise SshRemoteError(
                f"unsupported SSH version {line[:40]!r} (SSH-2.0 or chisel's lines only)",
                DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED,
            )
        self.peer_version = line
        self._start_kex()
        return True

    # -- packets --------------------------------------------------------------------

    def _read_packets(self) -> None:
        buf = self._inbuf
        size = len(buf)
        pos = 0
        limit = self.limits.max_packet_bytes
        try:
            while not self.closed:
                recv = self._recv
                length = self._rlen
                if length < 0:
                    if size - pos < 4:
                        break
                    length = recv.length(self._rseq, buf[pos : pos + 4])
                    if length > limit:
                        raise SshRemoteError(
                            f"packet of {length} bytes is over the limit of {limit}"
                        )
                    if length < 5 or (recv.tag and length % recv.block):
                        raise SshRemoteError(f"bad packet length {length}")
                    self._rlen = length
                total = 4 + length + recv.tag
                if size - pos < total:
                    break
                body = recv.open(self._rseq, buf, pos, length)
                pos += total
                self._rlen = -1
                seq = self._rseq = (self._rseq + 1) & _MASK32
                if seq == 0 and self._initial:
                    raise SshRemoteError("sequence number wrapped during the initial key exchange")
                self._rbytes += total
                end = length - body[0]
                if body[0] < 4 or end < 2:
                    raise SshRemoteError(f"bad padding length {body[0]} in a {length}-byte packet")
                self._dispatch(body, end)
        finally:
            if pos:
                del buf[:pos]

    def _emit(self, head: bytes, data: bytes | memoryview = b"", lazy: bool = False) -> None:
        """Seal one message now, whatever the key-exchange state."""
        out = self._out
        was_empty = not out
        self._send.seal(self._sseq, out, head, data)
        self._sseq = (self._sseq + 1) & _MASK32
        self._sbytes += len(head) + len(data)
        if lazy:
            if was_empty:
                self.on_lazy_output()
        elif not self._urgent:
            self._urgent = True
            self.on_output()

    def send_payload(
        self, head: bytes, data: bytes | memoryview = b"", *, lazy: bool = False
    ) -> None:
        """Send a non-transport message now, or after the key exchange under way.

        ``lazy``: nobody waits for this message (on_lazy_output instead of
        on_output); it keeps its place in the output either way.
        """
        if self.closed:
            raise SshLocalError("the SSH connection is closed")
        if self._kex is not None:
            self._deferred_bytes += len(head) + len(data)
            if self._deferred_bytes > self.limits.max_deferred_bytes:
                raise SshLocalError("too much data held during the key exchange")
            self._deferred.append((head, data))
            return
        self._emit(head, data, lazy)
        if self._sbytes > self.limits.rekey_bytes:
            self._start_kex()

    # -- dispatch --------------------------------------------------------------------

    def _dispatch(self, body: bytes, end: int) -> None:
        msg = body[1]
        if msg < 50:
            self._transport_message(msg, body, end)
            return
        if self._gate:
            raise SshRemoteError(
                f"message {msg} during the key exchange (before NEWKEYS)",
                DISCONNECT_PROTOCOL_ERROR,
            )
        self._connection_message(msg, body, end)

    def _connection_message(self, msg: int, body: bytes, end: int) -> None:
        raise NotImplementedError

    def _transport_message(self, msg: int, body: bytes, end: int) -> None:
        payload = body[1:end]
        kex = self._kex
        if kex is not None and kex.ignore_next and 30 <= msg <= 49:
            kex.ignore_next = False
            return
        strict_initial = self._initial and self.strict
        if msg == MSG_DISCONNECT:
            r = Reader(payload, 1)
            code = r.u32()
            text = r.text()
            self.closed = True
            raise SshDisconnected(code, text)
        if msg == kexmod.MSG_KEXINIT:
            self._on_kexinit(payload)
        elif msg == kexmod.MSG_KEX_ECDH_INIT and not self.client:
            self._on_ecdh_init(payload)
        elif msg == kexmod.MSG_KEX_ECDH_REPLY and self.client:
            self._on_ecdh_reply(payload)
        elif msg == kexmod.MSG_NEWKEYS:
            self._on_newkeys()
        elif strict_initial:
            raise SshRemoteError(f"strict key exchange: unexpected message {msg} before NEWKEYS")
        elif msg in (MSG_IGNORE, MSG_DEBUG, MSG_UNIMPLEMENTED):
            pass
        elif msg >= 20:
            raise SshRemoteError(f"unexpected key-exchange message {msg} in this state")
        elif self._gate:
            raise SshRemoteError(f"message {msg} during the key exchange (before NEWKEYS)")
        elif msg in (MSG_SERVICE_REQUEST, MSG_SERVICE_ACCEPT, MSG_EXT_INFO):
            self._service_message(msg, payload)
        else:
            self._unimplemented()

    def _service_message(self, msg: int, payload: bytes) -> None:
        raise NotImplementedError

    def _unimplemented(self) -> None:
        self._emit(bytes((MSG_UNIMPLEMENTED,)) + u32((self._rseq - 1) & _MASK32))

    # -- key exchange ------------------------------------------------------------------

    def _start_kex(self) -> None:
        if self._kex is not None or self.closed:
            return
        algorithms = self._kex_algorithms
        if self._initial:
            strict = kexmod.STRICT_CLIENT if self.client else kexmod.STRICT_SERVER
            algorithms = (*algorithms, strict)
        host_keys = VERIFY_ALGORITHMS if self.client else (EcdsaKey.algorithm,)
        ours = kexmod.build_kexinit(os.urandom(16), algorithms, host_keys, self._ciphers)
        self._kex = _Kex(ours)
        self._emit(ours)

    def _on_kexinit(self, payload: bytes) -> None:
        first_packet = self._rseq == 1
        if self._kex is None:
            self._start_kex()
        kex = self._kex
        assert kex is not None
        if kex.peer is not None:
            raise SshRemoteError("second KEXINIT during one key exchange")
        peer = kexmod.parse_kexinit(payload)
        ours = kexmod.parse_kexinit(kex.ours)
        client, server = (ours, peer) if self.client else (peer, ours)
        agreement = kexmod.negotiate(client, server, initial=self._initial)
        if self._initial:
            self.strict = agreement.strict
            if agreement.strict and not first_packet:
                raise SshRemoteError("strict key exchange: KEXINIT was not the first packet")
        kex.peer = peer
        kex.agreement = agreement
        kex.ignore_next = kexmod.wrong_guess(peer, agreement)
        self._gate = True
        self.kex_name = agreement.kex
        if self.client:
            kex.ephemeral = kexmod.Ephemeral(agreement.kex)
            self._emit(bytes((kexmod.MSG_KEX_ECDH_INIT,)) + string(kex.ephemeral.public))

    def _on_ecdh_init(self, payload: bytes) -> None:
        kex = self._kex
        if kex is None or kex.agreement is None or kex.ephemeral is not None:
            raise SshRemoteError("KEX_ECDH_INIT out of order")
        assert self.host_key is not None
        assert kex.peer is not None
        q_c = Reader(payload, 1).string(256)
        eph = kex.ephemeral = kexmod.Ephemeral(kex.agreement.kex)
        k = eph.shared_secret(q_c)
        assert self.peer_version is not None
        k_s = self.host_key.public_blob
        h = kexmod.exchange_hash(
            self.peer_version, self.local_version, kex.peer.payload, kex.ours, k_s, q_c,
            eph.public, k,
        )  # fmt: skip
        self._keys_ready(k, h)
        signature = self.host_key.sign(h)
        self._emit(
            bytes((kexmod.MSG_KEX_ECDH_REPLY,))
            + string(k_s)
            + string(eph.public)
            + string(signature)
        )
        self._send_newkeys()

    def _on_ecdh_reply(self, payload: bytes) -> None:
        kex = self._kex
        if kex is None or kex.ephemeral is None or kex.recv_keys is not None:
            raise SshRemoteError("KEX_ECDH_REPLY out of order")
        assert kex.agreement is not None
        assert kex.peer is not None
        r = Reader(payload, 1)
        k_s = r.string(4096)
        q_s = r.string(256)
        signature = r.string(4096)
        if key_algorithm(k_s) != kex.agreement.host_key:
            raise SshRemoteError(
                f"server sent a {key_algorithm(k_s)} host key after agreeing on "
                f"{kex.agreement.host_key}",
                DISCONNECT_HOST_KEY_NOT_VERIFIABLE,
            )
        if self.peer_host_key and k_s != self.peer_host_key:
            raise SshRemoteError(
                "server changed its host key during a re-key", DISCONNECT_HOST_KEY_NOT_VERIFIABLE
            )
        k = kex.ephemeral.shared_secret(q_s)
        assert self.peer_version is not None
        h = kexmod.exchange_hash(
            self.local_version, self.peer_version, kex.ours, kex.peer.payload, k_s,
            kex.ephemeral.public, q_s, k,
        )  # fmt: skip
        verify(k_s, signature, h)
        if not self.peer_host_key:
            self.peer_host_key = k_s
            self._check_host_key(k_s)
        self._keys_ready(k, h)
        self._send_newkeys()

    def _check_host_key(self, blob: bytes) -> None:
        """Hook: the client may refuse the server's key (raise SshRemoteError)."""

    def _keys_ready(self, k: bytes, h: bytes) -> None:
        kex = self._kex
        assert kex is not None
        assert kex.agreement is not None
        if not self.session_id:
            self.session_id = h
        cs, sc = kexmod.derive_keys(k, h, self.session_id, kex.agreement)
        send, recv = (cs, sc) if self.client else (sc, cs)
        kex.recv_keys = recv
        self._pending_send = send

    def _send_newkeys(self) -> None:
        kex = self._kex
        assert kex is not None
        self._emit(bytes((kexmod.MSG_NEWKEYS,)))
        keys = self._pending_send
        assert keys is not None
        self._send = new_cipher(keys.cipher, keys.key, keys.iv)
        if self.strict:
            self._sseq = 0
        kex.sent_newkeys = True
        if not self._gate:
            self._kex_done()

    def _on_newkeys(self) -> None:
        kex = self._kex
        if kex is None or kex.recv_keys is None:
            raise SshRemoteError("NEWKEYS before the key exchange finished")
        if not self._gate:
            raise SshRemoteError("second NEWKEYS")
        keys = kex.recv_keys
        self._recv = new_cipher(keys.cipher, keys.key, keys.iv)
        if self.strict:
            self._rseq = 0
        self._gate = False
        if kex.sent_newkeys:
            self._kex_done()

    def _kex_done(self) -> None:
        kex = self._kex
        assert kex is not None
        assert kex.agreement is not None
        self.cipher_names = (
            (kex.agreement.cipher_cs, kex.agreement.cipher_sc)
            if self.client
            else (kex.agreement.cipher_sc, kex.agreement.cipher_cs)
        )
        self._kex = None
        first = self._initial
        self._initial = False
        self.kex_count += 1
        self._sbytes = self._rbytes = 0
        self._kex_time = self._clock()
        deferred, self._deferred = self._deferred, []
        self._deferred_bytes = 0
        for head, data in deferred:
            self._emit(head, data)
        self._after_kex(first)

    def _after_kex(self, first: bool) -> None:
        """Hook: the connection layer starts authentication after the first one."""

    def start_rekey(self) -> None:
        """Begin a key exchange now (no-op while one runs)."""
        self._start_kex()


def _nothing() -> None:
    pass
