"""Packet protection (RFC 4253 §6): none, AES-GCM, chacha20-poly1305.

One object per direction. ``length(seq, head)`` reads the 4-byte packet
length, ``open(seq, buf, pos, length)`` authenticates and decrypts one packet
whose length field starts at ``buf[pos]`` and returns the plaintext from the
padding-length byte on, ``seal(seq, out, head, data)`` appends the wire bytes
of the packet whose payload is ``head + data`` to ``out`` (as several chunks:
the caller writes them with one ``writelines``).

Constructions, all with primitives from ``cryptography``:

- ``aes{128,256}-gcm@openssh.com`` (RFC 5647 as OpenSSH does it): the length
  is sent in the clear as associated data; the 12-byte nonce is the derived
  IV whose last 8 bytes count packets.
- ``chacha20-poly1305@openssh.com`` (OpenSSH PROTOCOL.chacha20poly1305): a
  64-byte key, the second half encrypts the length, the first half the
  payload (block counter 1) and gives the Poly1305 key (block counter 0); the
  nonce is the sequence number.

Padding is zeros: under an AEAD cipher it is encrypted and authenticated, so
random padding adds nothing, and before the first NEWKEYS nothing is secret.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qanat.wire.ssh.errors import DISCONNECT_MAC_ERROR, SshRemoteError

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ZEROS = bytes(64)
_PADS = [bytes(n) for n in range(64)]

#: name -> (key bytes, IV bytes)
CIPHER_SIZES = {
    "aes128-gcm@openssh.com": (16, 12),
    "aes256-gcm@openssh.com": (32, 12),
    "chacha20-poly1305@openssh.com": (64, 0),
}


class PacketCipher:
    """No protection: the state before the first NEWKEYS."""

    name = "none"
    block = 8
    tag = 0
    #: Whether the 4-byte length counts in the padding alignment.
    aligned_length = True

    def length(self, seq: int, head: bytes | bytearray) -> int:
        value: int = _U32.unpack_from(head, 0)[0]
        return value

    def open(self, seq: int, buf: bytearray, pos: int, length: int) -> bytes:
        return bytes(buf[pos + 4 : pos + 4 + length])

    def padding(self, size: int) -> int:
        block = self.block
        pad = block - ((size + 5 if self.aligned_length else size + 1) % block)
        return pad + block if pad < 4 else pad

    def seal(self, seq: int, out: list[bytes], head: bytes, data: bytes | memoryview = b"") -> None:
        pad = self.padding(len(head) + len(data))
        out.append(_U32.pack(1 + len(head) + len(data) + pad) + bytes((pad,)) + head)
        if data:
            out.append(bytes(data))
        out.append(_PADS[pad])


class AesGcm(PacketCipher):
    block = 16
    tag = 16
    aligned_length = False

    __slots__ = ("_aead", "_counter", "_fixed", "name")

    def __init__(self, name: str, key: bytes, iv: bytes) -> None:
        self.name = name
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        counter = self._counter
        self._counter = (counter + 1) & 0xFFFFFFFFFFFFFFFF
        return self._fixed + _U64.pack(counter)

    def open(self, seq: int, buf: bytearray, pos: int, length: int) -> bytes:
        with memoryview(buf) as view:
            try:
                return self._aead.decrypt(
                    self._nonce(), view[pos + 4 : pos + 4 + length + 16], view[pos : pos + 4]
                )
            except InvalidTag:
                raise SshRemoteError("bad packet MAC (AES-GCM tag)", DISCONNECT_MAC_ERROR) from None

    def seal(self, seq: int, out: list[bytes], head: bytes, data: bytes | memoryview = b"") -> None:
        size = len(head) + len(data)
        pad = 16 - ((size + 1) & 15)
        if pad < 4:
            pad += 16
        header = _U32.pack(size + 1 + pad)
        if data:
            plain = b"".join((bytes((pad,)), head, data, _PADS[pad]))
        else:
            plain = bytes((pad,)) + head + _PADS[pad]
        out.append(header)
        out.append(self._aead.encrypt(self._nonce(), plain, header))


class ChaChaPoly(PacketCipher):
    name = "chacha20-poly1305@openssh.com"
    block = 8
    tag = 16
    aligned_length = False

    __slots__ = ("_header_key", "_main_key")

    def __init__(self, name: str, key: bytes, iv: bytes) -> None:
        self._main_key = key[:32]
        self._header_key = key[32:64]

    @staticmethod
    def _stream(key: bytes, seq: int) -> Any:
        # cryptography's 16-byte ChaCha20 nonce is OpenSSH's layout: a
        # 64-bit little-endian block counter (0 here), then the 64-bit nonce.
        return Cipher(algorithms.ChaCha20(key, _ZEROS[:8] + _U64.pack(seq)), mode=None).encryptor()

    def length(self, seq: int, head: bytes | bytearray) -> int:
        plain = self._stream(self._header_key, seq).update(bytes(head[:4]))
        value: int = _U32.unpack(plain)[0]
        return value

    def open(self, seq: int, buf: bytearray, pos: int, length: int) -> bytes:
        main = self._stream(self._main_key, seq)
        # Block 0 gives the Poly1305 key; the payload starts at block 1.
        mac = Poly1305(main.update(_ZEROS)[:32])
        end = pos + 4 + length
        with memoryview(buf) as view:
            mac.update(view[pos:end])
            try:
                mac.verify(bytes(view[end : end + 16]))
            except InvalidTag:
                raise SshRemoteError(
                    "bad packet MAC (chacha20-poly1305 tag)", DISCONNECT_MAC_ERROR
                ) from None
            plain: bytes = main.update(view[pos + 4 : end])
        return plain

    def seal(self, seq: int, out: list[bytes], head: bytes, data: bytes | memoryview = b"") -> None:
        size = len(head) + len(data)
        pad = 8 - ((size + 1) & 7)
        if pad < 4:
            pad += 8
        enc_len: bytes = self._stream(self._header_key, seq).update(_U32.pack(size + 1 + pad))
        main = self._stream(self._main_key, seq)
        mac = Poly1305(main.update(_ZEROS)[:32])
        body: bytes = main.update(b"".join((bytes((pad,)), head, data, _PADS[pad])))
        mac.update(enc_len)
        mac.update(body)
        out.append(enc_len)
        out.append(body)
        out.append(mac.finalize())


def new_cipher(name: str, key: bytes, iv: bytes) -> PacketCipher:
    if name == "chacha20-poly1305@openssh.com":
        return ChaChaPoly(name, key, iv)
    return AesGcm(name, key, iv)
