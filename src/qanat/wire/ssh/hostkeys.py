"""Host keys: ECDSA P-256 to sign and verify, Ed25519 to verify (RFC 5656, 8709).

Wire forms (RFC 4253 §6.6): a public key blob is
``string algorithm, ...key fields``, a signature is
``string algorithm, string signature``; for ECDSA the inner signature is
``mpint r, mpint s`` over SHA-256 of the signed data.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from qanat.wire.ssh.codec import Reader, mpint, string
from qanat.wire.ssh.errors import DISCONNECT_HOST_KEY_NOT_VERIFIABLE, SshRemoteError

ECDSA_P256 = "ecdsa-sha2-nistp256"
ED25519 = "ssh-ed25519"
#: What a client accepts from a server, in preference order.
VERIFY_ALGORITHMS = (ECDSA_P256, ED25519)


class EcdsaKey:
    """An ECDSA P-256 private key that signs exchange hashes (a server's host
    key, or a client's user key for publickey authentication)."""

    algorithm = ECDSA_P256

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"expected a P-256 key, got {key.curve.name}")
        self._key = key
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.public_blob = string(ECDSA_P256.encode()) + string(b"nistp256") + string(point)

    @classmethod
    def generate(cls) -> EcdsaKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_openssh(cls, data: bytes) -> EcdsaKey:
        """Load an unencrypted OpenSSH (or PEM) private key.

        Raises:
            ValueError: not a readable P-256 private key.
        """
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)  # type: ignore[assignment]
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"not an ECDSA key ({type(key).__name__})")
        return cls(key)

    def to_openssh(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return string(ECDSA_P256.encode()) + string(mpint(r) + mpint(s))

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key


def key_algorithm(blob: bytes) -> str:
    return Reader(blob).text(64)


def fingerprint_sha256(blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def verify(blob: bytes, signature: bytes, data: bytes) -> None:
    """Check a host key's signature over ``data``.

    Raises:
        SshRemoteError: unsupported key type, malformed key or signature, or
            a signature that does not verify (code HOST_KEY_NOT_VERIFIABLE).
    """
    bad = DISCONNECT_HOST_KEY_NOT_VERIFIABLE
    keys = Reader(blob)
    algorithm = keys.text(64)
    sig = Reader(signature)
    sig_algorithm = sig.text(64)
    sig_data = sig.string(1024)
    if sig_algorithm != algorithm:
        raise SshRemoteError(f"host key is {algorithm} but signed as {sig_algorithm}", bad)
    try:
        if algorithm == ECDSA_P256:
            if keys.string(64) != b"nistp256":
                raise SshRemoteError("ECDSA host key is not on nistp256", bad)
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), keys.string(256))
            inner = Reader(sig_data)
            der = encode_dss_signature(inner.mpint(), inner.mpint())
            public.verify(der, data, ec.ECDSA(hashes.SHA256()))
        elif algorithm == ED25519:
            ed25519.Ed25519PublicKey.from_public_bytes(keys.string(64)).verify(sig_data, data)
        else:
            raise SshRemoteError(f"unsupported host key type {algorithm!r}", bad)
    except InvalidSignature:
        raise SshRemoteError(f"{algorithm} host key signature does not verify", bad) from None
    except ValueError as exc:
        raise SshRemoteError(f"malformed {algorithm} host key: {exc}", bad) from None
