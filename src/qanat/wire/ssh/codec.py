"""SSH data types (RFC 4251 §5): encoders and one bounds-checked reader."""

from __future__ import annotations

import struct

from qanat.wire.ssh.errors import SshRemoteError

_U32 = struct.Struct(">I")
pack_u32 = _U32.pack


def u32(value: int) -> bytes:
    return _U32.pack(value)


def string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def mpint(value: int) -> bytes:
    """A non-negative multiple-precision integer in two's complement."""
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return _U32.pack(0)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # room for a sign bit
    return string(raw)


def mpint_from_unsigned(raw: bytes) -> bytes:
    """mpint of a big-endian unsigned integer (X25519 secrets, ECDH x)."""
    return mpint(int.from_bytes(raw, "big"))


def namelist(names: tuple[str, ...] | list[str]) -> bytes:
    return string(",".join(names).encode("ascii"))


class Reader:
    """Reads SSH fields from one message; every short read is a peer error."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _need(self, n: int) -> int:
        start = self.pos
        end = start + n
        if end > len(self.data):
            raise SshRemoteError("truncated SSH message")
        self.pos = end
        return start

    def byte(self) -> int:
        start = self._need(1)
        return self.data[start]

    def boolean(self) -> bool:
        return self.byte() != 0

    def u32(self) -> int:
        start = self._need(4)
        value: int = _U32.unpack_from(self.data, start)[0]
        return value

    def raw(self, n: int) -> bytes:
        start = self._need(n)
        return self.data[start : start + n]

    def string(self, limit: int = 1 << 20) -> bytes:
        n = self.u32()
        if n > limit:
            raise SshRemoteError(f"SSH string of {n} bytes is over the limit of {limit}")
        return self.raw(n)

    def text(self, limit: int = 1 << 16) -> str:
        return self.string(limit).decode("utf-8", "replace")

    def mpint(self) -> int:
        raw = self.string(16 * 1024)
        if raw and raw[0] & 0x80:
            raise SshRemoteError("negative mpint where a positive one is required")
        return int.from_bytes(raw, "big")

    def namelist(self) -> tuple[str, ...]:
        raw = self.string(64 * 1024)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SshRemoteError("non-ASCII algorithm name list") from None
        return tuple(text.split(",")) if text else ()

    def rest(self) -> bytes:
        data = self.data[self.pos :]
        self.pos = len(self.data)
        return data
