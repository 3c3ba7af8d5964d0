"""Algorithm negotiation and key exchange (RFC 4253 §7-8, RFC 5656, RFC 8731).

Pure functions and small value objects: building and parsing KEXINIT,
choosing algorithms, the ephemeral ECDH halves, the exchange hash and the
key derivation. The state machine that sequences them is in
:mod:`qanat.wire.ssh.transport`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from qanat.wire.ssh.ciphers import CIPHER_SIZES
from qanat.wire.ssh.codec import Reader, boolean, mpint_from_unsigned, namelist, string, u32
from qanat.wire.ssh.errors import DISCONNECT_KEY_EXCHANGE_FAILED, SshRemoteError

MSG_KEXINIT = 20
MSG_NEWKEYS = 21
MSG_KEX_ECDH_INIT = 30
MSG_KEX_ECDH_REPLY = 31

KEX_ALGORITHMS = ("curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256")
#: AEAD only: with these no MAC is negotiated (OpenSSH, Go x/crypto and
#: asyncssh all skip the MAC lists when the chosen cipher is AEAD), so our
#: MAC lists are empty.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")
STRICT_CLIENT = "kex-strict-c-v00@openssh.com"
STRICT_SERVER = "kex-strict-s-v00@openssh.com"
EXT_INFO_CLIENT = "ext-info-c"
_PSEUDO = frozenset({STRICT_CLIENT, STRICT_SERVER, EXT_INFO_CLIENT, "ext-info-s"})


@dataclass(frozen=True, slots=True)
class KexInit:
    """A parsed SSH_MSG_KEXINIT; ``payload`` is the message as it enters the hash."""

    payload: bytes
    kex: tuple[str, ...]
    host_key: tuple[str, ...]
    cipher_cs: tuple[str, ...]
    cipher_sc: tuple[str, ...]
    comp_cs: tuple[str, ...]
    comp_sc: tuple[str, ...]
    first_follows: bool


@dataclass(frozen=True, slots=True)
class Agreement:
    kex: str
    host_key: str
    cipher_cs: str
    cipher_sc: str
    strict: bool
    #: The peer guessed wrong and its next kex packet is to be ignored.
    ignore_guess: bool


def build_kexinit(
    cookie: bytes,
    kex: tuple[str, ...],
    host_key: tuple[str, ...],
    ciphers: tuple[str, ...] = CIPHERS,
) -> bytes:
    empty = namelist(())
    none = namelist(("none",))
    return b"".join(
        (
            bytes((MSG_KEXINIT,)),
            cookie,
            namelist(kex),
            namelist(host_key),
            namelist(ciphers),
            namelist(ciphers),
            empty,
            empty,
            none,
            none,
            empty,
            empty,
            boolean(False),
            u32(0),
        )
    )


def parse_kexinit(payload: bytes) -> KexInit:
    """Raises: SshRemoteError for a malformed message."""
    r = Reader(payload, 1)
    r.raw(16)
    kex = r.namelist()
    host_key = r.namelist()
    cipher_cs = r.namelist()
    cipher_sc = r.namelist()
    r.namelist()
    r.namelist()
    comp_cs = r.namelist()
    comp_sc = r.namelist()
    r.namelist()
    r.namelist()
    first = r.boolean()
    r.u32()
    return KexInit(payload, kex, host_key, cipher_cs, cipher_sc, comp_cs, comp_sc, first)


def _choose(what: str, client: tuple[str, ...], server: tuple[str, ...]) -> str:
    for name in client:
        if name in server and name not in _PSEUDO:
            return name
    raise SshRemoteError(
        f"no common {what} algorithm (client offers {','.join(client) or 'nothing'}; "
        f"server offers {','.join(server) or 'nothing'})",
        DISCONNECT_KEY_EXCHANGE_FAILED,
    )


def negotiate(client: KexInit, server: KexInit, *, initial: bool) -> Agreement:
    """RFC 4253 §7.1: the client's first choice that the server also has.

    Raises:
        SshRemoteError: no common algorithm for some slot.
    """
    kex = _choose("key exchange", client.kex, server.kex)
    host_key = _choose("host key", client.host_key, server.host_key)
    cipher_cs = _choose("client-to-server cipher", client.cipher_cs, server.cipher_cs)
    cipher_sc = _choose("server-to-client cipher", client.cipher_sc, server.cipher_sc)
    _choose("client-to-server compression", client.comp_cs, server.comp_cs)
    _choose("server-to-client compression", client.comp_sc, server.comp_sc)
    strict = initial and STRICT_CLIENT in client.kex and STRICT_SERVER in server.kex
    return Agreement(kex, host_key, cipher_cs, cipher_sc, strict, False)


def wrong_guess(peer: KexInit, agreement: Agreement) -> bool:
    """Whether the peer's guessed first kex packet must be ignored (RFC 4253 §7)."""
    if not peer.first_follows or not peer.kex or not peer.host_key:
        return False
    return peer.kex[0] != agreement.kex or peer.host_key[0] != agreement.host_key


class Ephemeral:
    """One side's ephemeral ECDH key for one key exchange."""

    def __init__(self, kex: str) -> None:
        self.kex = kex
        if kex.startswith("curve25519"):
            self._x = x25519.X25519PrivateKey.generate()
            self.public = self._x.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        else:
            self._p = ec.generate_private_key(ec.SECP256R1())
            self.public = self._p.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )

    def shared_secret(self, peer_public: bytes) -> bytes:
        """The shared secret K, mpint-encoded as it enters the hash.

        Raises:
            SshRemoteError: the peer's public value is invalid.
        """
        try:
            if self.kex.startswith("curve25519"):
                if len(peer_public) != 32:
                    raise ValueError("X25519 public key is not 32 bytes")
                raw = self._x.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
                if raw == bytes(32):
                    raise ValueError("all-zero X25519 shared secret")
            else:
                peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_public)
                raw = self._p.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise SshRemoteError(
                f"bad ephemeral key from peer: {exc}", DISCONNECT_KEY_EXCHANGE_FAILED
            ) from None
        return mpint_from_unsigned(raw)


def exchange_hash(
    v_c: bytes,
    v_s: bytes,
    i_c: bytes,
    i_s: bytes,
    k_s: bytes,
    q_c: bytes,
    q_s: bytes,
    k: bytes,
) -> bytes:
    """H for the ECDH methods (RFC 5656 §4, RFC 8731 §3.1); all use SHA-256."""
    h = hashlib.sha256()
    for part in (v_c, v_s, i_c, i_s, k_s, q_c, q_s):
        h.update(string(part))
    h.update(k)
    return h.digest()


def derive(k: bytes, h: bytes, session_id: bytes, letter: bytes, size: int) -> bytes:
    """RFC 4253 §7.2: HASH(K || H || X || session_id), extended as needed."""
    out = hashlib.sha256(k + h + letter + session_id).digest()
    while len(out) < size:
        out += hashlib.sha256(k + h + out).digest()
    return out[:size]


@dataclass(frozen=True, slots=True)
class DirectionKeys:
    cipher: str
    key: bytes
    iv: bytes


def derive_keys(
    k: bytes, h: bytes, session_id: bytes, agreement: Agreement
) -> tuple[DirectionKeys, DirectionKeys]:
    """(client-to-server, server-to-client) keys for the agreed ciphers."""
    key_cs, iv_cs = CIPHER_SIZES[agreement.cipher_cs]
    key_sc, iv_sc = CIPHER_SIZES[agreement.cipher_sc]
    return (
        DirectionKeys(
            agreement.cipher_cs,
            derive(k, h, session_id, b"C", key_cs),
            derive(k, h, session_id, b"A", iv_cs) if iv_cs else b"",
        ),
        DirectionKeys(
            agreement.cipher_sc,
            derive(k, h, session_id, b"D", key_sc),
            derive(k, h, session_id, b"B", iv_sc) if iv_sc else b"",
        ),
    )
