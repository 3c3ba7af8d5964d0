"""A sans-IO SSH-2 implementation: exactly what chisel-v3 needs, both ends.

No sockets, no event loop: :class:`SshConnection` takes received bytes
(``receive_data``) and reports events to a handler object synchronously;
what it wants to send accumulates for ``data_to_send``. ``qanat.net.ssh``
is the asyncio adapter.

Modules, bottom up:

- ``codec``: SSH data types and a bounds-checked reader.
- ``ciphers``: packet protection: none, ``aes128-gcm@openssh.com``,
  ``aes256-gcm@openssh.com``, ``chacha20-poly1305@openssh.com``.
- ``hostkeys``: ``ecdsa-sha2-nistp256`` sign/verify, ``ssh-ed25519`` verify.
- ``kex``: KEXINIT, negotiation, ``curve25519-sha256`` (and ``@libssh.org``)
  and ``ecdh-sha2-nistp256``, exchange hash, key derivation.
- ``transport``: version exchange, packets, key exchange and re-keying,
  strict kex (``kex-strict-*-v00@openssh.com``).
- ``connection``: user authentication as the Go peers do it, global
  requests, channels with windows, EOF and close.

All cryptography comes from ``cryptography`` (AES-GCM, ChaCha20, Poly1305,
X25519, P-256 ECDH and ECDSA, Ed25519, SHA-256). Limits are constructor
arguments (:class:`SshLimits`). Errors: see :mod:`qanat.wire.ssh.errors`.
"""

from qanat.wire.ssh.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    OPEN_RESOURCE_SHORTAGE,
    OPEN_UNKNOWN_CHANNEL_TYPE,
    BaseHandler,
    SshConnection,
    SshHandler,
)
from qanat.wire.ssh.errors import SshDisconnected, SshLocalError, SshRemoteError
from qanat.wire.ssh.hostkeys import EcdsaKey, fingerprint_sha256
from qanat.wire.ssh.transport import SshLimits

__all__ = [
    "OPEN_ADMINISTRATIVELY_PROHIBITED",
    "OPEN_CONNECT_FAILED",
    "OPEN_RESOURCE_SHORTAGE",
    "OPEN_UNKNOWN_CHANNEL_TYPE",
    "BaseHandler",
    "EcdsaKey",
    "SshConnection",
    "SshDisconnected",
    "SshHandler",
    "SshLimits",
    "SshLocalError",
    "SshRemoteError",
    "fingerprint_sha256",
]
