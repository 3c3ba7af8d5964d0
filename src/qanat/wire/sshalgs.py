"""The SSH algorithms qanat offers and accepts: one reviewed constant.

Both sides of every tunnel (gateway server, connector client) negotiate from
exactly these lists, whatever SSH implementation carries them. Reviewed
against chisel's Go ``x/crypto/ssh`` peers (curve25519, ECDSA P-256 host
keys, AES-GCM) and OpenSSH 9.

Deliberately absent:

- **compression** (``zlib``, ``zlib@openssh.com``): a peer holding a valid
  token could send small packets that inflate to hundreds of MiB (a
  compression bomb); the tunnel carries app bytes, which are rarely
  compressible enough to matter;
- **SHA-1 and small groups**: ``diffie-hellman-group14-sha1``,
  ``diffie-hellman-group1-sha1``, ``diffie-hellman-group-exchange-*``
  (also a CPU cost chosen by the peer), ``hmac-sha1``, ``ssh-rsa`` (SHA-1
  signatures);
- **weak or truncated MACs**: ``umac-64``, ``hmac-md5``, ``*-96``;
- **GSS-API** and post-quantum hybrids not yet in Go's x/crypto.

Preference order puts AES-GCM first: it runs on AES-NI and is several times
faster here than chacha20-poly1305 (see docs/benchmarks.md).
"""

from __future__ import annotations

KEX_ALGS: tuple[str, ...] = (
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
)

ENCRYPTION_ALGS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)

#: Used only with the CTR ciphers (the AEAD ciphers carry their own tag).
MAC_ALGS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)

COMPRESSION_ALGS: tuple[str, ...] = ("none",)

#: Host key signatures: what the gateway signs with (its key is ECDSA P-256)
#: and what a connector accepts from a gateway.
HOST_KEY_ALGS: tuple[str, ...] = (
    "ecdsa-sha2-nistp256",
    "ssh-ed25519",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-256",
    "rsa-sha2-512",
)

#: Names that must never appear in any list above (checked by the tests).
FORBIDDEN: frozenset[str] = frozenset(
    {
        "zlib",
        "zlib@openssh.com",
        "diffie-hellman-group1-sha1",
        "diffie-hellman-group14-sha1",
        "diffie-hellman-group-exchange-sha1",
        "hmac-sha1",
        "hmac-sha1-etm@openssh.com",
        "hmac-md5",
        "umac-64@openssh.com",
        "umac-64-etm@openssh.com",
        "ssh-rsa",
        "ssh-dss",
        "3des-cbc",
        "aes128-cbc",
        "arcfour",
    }
)
