"""chisel's UDP channel codec: a Go ``encoding/gob`` stream of ``udpPacket``.

A chisel channel whose extra data ends in ``/udp`` carries datagrams as Go
gob values of ``udpPacket{Src string; Payload []byte}``: ``Src`` names the
app-side flow, the address of the app that sent the datagram
(``127.0.0.1:40001``), so that replies find their way back, and ``Payload``
is the datagram itself. This module
implements the small part of gob that such a stream uses, without I/O.

The pieces of the gob wire format, in our words:

Unsigned integers
    A value below 128 is one byte. Anything larger is its big-endian bytes,
    without leading zeros, preceded by one byte holding the *negated* byte
    count (``0xff`` for one byte, ``0xfe`` for two, ...): 300 is
    ``fe 01 2c``. At most eight bytes follow.

Signed integers
    Folded into an unsigned one: the value shifted left by one, and for a
    negative value the bits complemented with the low bit set. 64 is
    ``ff 80``, -64 is ``7f``.

Strings and byte slices
    Unsigned length, then the bytes.

Messages
    The stream is a sequence of messages, each an unsigned byte count
    followed by that many bytes. A message starts with a signed type id.
    A negative id ``-n`` means "this message defines type ``n``"; a positive
    id means "this message is a value of type ``n``". Ids below 64 are the
    predeclared types (5 is ``[]byte``, 6 is ``string``); the first type a Go
    program defines gets 64.

Structs and field deltas
    A struct value is a list of (field delta, field value) pairs ended by a
    delta of 0. Fields are numbered from 0 and the delta is the distance
    from the previous field sent (the first from -1), so a field at its zero
    value (empty string, empty slice) is simply skipped. ``udpPacket`` with
    only a payload therefore starts with delta 2.

Type definitions
    A definition is itself a gob struct value, of Go's ``wireType``, whose
    third field (``StructT``) describes a struct: its ``CommonType`` (name
    and id) and a slice of fields, each a name and a type id. Go's encoder
    sends the definition of ``udpPacket`` once, just before the first value.

So the first datagram of a stream looks like this (lengths in hex)::

    2a                              message of 42 bytes
      7f                            type id -64: defines type 64
      03 01 01 09 "udpPacket" 01 ff80 00       StructT, CommonType{name, id}
      01 02 01 03 "Src" 01 0c 00 01 07 "Payload" 01 0a 00 00 00
                                    two fields: Src string(6), Payload []byte(5)
    1b                              message of 27 bytes
      ff80                          a value of type 64
      01 0f "127.0.0.1:40001"       field 0 (Src)
      01 05 "hello"                 field 1 (Payload)
      00                            end of struct

The decoder accepts any struct definition whose ``Src`` is a string and
whose ``Payload`` is a byte slice; other fields of predeclared scalar types
(a ``Dst string``, say) are read and dropped, as Go's decoder would do for
fields the receiving struct lacks. Anything else is refused.

Errors: the decoder raises :class:`~qanat.errors.GobError` (a
``RemoteProtocolError``) and nothing else; after one, the stream is dead and
every later :meth:`GobDecoder.feed` raises again. The encoder raises
:class:`~qanat.errors.LocalProtocolError` when asked to send a packet the
peer would not accept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from qanat.errors import GobError, LocalProtocolError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_SRC_BYTES",
    "GobDecoder",
    "GobEncoder",
    "GobError",
    "UdpPacket",
]

#: Largest gob message accepted; a full-size packet needs about 9.1 KiB.
MAX_MESSAGE_BYTES = 64 * 1024
#: chisel's largest UDP packet (its read buffer size).
MAX_PAYLOAD_BYTES = 9012
#: Longest ``Src``; real ones are ``[ipv6%zone]:port``, well under 100 bytes.
MAX_SRC_BYTES = 2048

# Predeclared gob type ids that may appear as struct fields.
_BOOL, _INT, _UINT, _FLOAT, _BYTES, _STRING, _COMPLEX = range(1, 8)
_FIRST_USER_TYPE_ID = 64
# udpPacket is the first (and only) type a chisel program defines on a stream.
_TYPE_ID = _FIRST_USER_TYPE_ID
# Field counts of Go's own descriptor structs.
_WIRE_TYPE_FIELDS = 7  # ArrayT, SliceT, StructT, MapT, GobEncoderT, ...
_STRUCT_T = 2
_MAX_STRUCT_FIELDS = 16
_MAX_NAME_BYTES = 256  # type and field names; they end up in error messages
_UINT_MAX_BYTES = 8


@dataclass(frozen=True, slots=True)
class UdpPacket:
    """One datagram and the address of the app that sent it."""

    src: str
    payload: bytes


# --- encoding ----------------------------------------------------------------


def _uint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes((0x100 - len(raw),)) + raw


def _int(value: int) -> bytes:
    return _uint(value << 1 if value >= 0 else (~value << 1) | 1)


def _string(raw: bytes) -> bytes:
    return _uint(len(raw)) + raw


def _message(body: bytes) -> bytes:
    return _uint(len(body)) + body


def _udp_packet_definition() -> bytes:
    """The message by which Go's encoder defines ``udpPacket``."""

    def field(name: bytes, type_id: int) -> bytes:
        return b"\x01" + _string(name) + b"\x01" + _int(type_id) + b"\x00"

    common = b"\x01" + _string(b"udpPacket") + b"\x01" + _int(_TYPE_ID) + b"\x00"
    fields = _uint(2) + field(b"Src", _STRING) + field(b"Payload", _BYTES)
    struct_type = b"\x01" + common + b"\x01" + fields + b"\x00"
    return _message(_int(-_TYPE_ID) + _uint(_STRUCT_T + 1) + struct_type + b"\x00")


_DEFINITION = _udp_packet_definition()


class GobEncoder:
    """Encode packets as Go's ``gob.Encoder`` would for one channel.

    The first :meth:`encode` also returns the type definition, so the
    concatenated output is a complete stream a Go decoder reads.
    """

    def __init__(self, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self._max_payload_bytes = max_payload_bytes
        self._defined = False

    def encode(self, packet: UdpPacket) -> bytes:
        """Return the bytes to send for ``packet``.

        Raises:
            LocalProtocolError: the payload is over ``max_payload_bytes``, or
                ``src`` holds a character UTF-8 cannot carry (a lone
                surrogate outside the ``surrogateescape`` range).
        """
        if len(packet.payload) > self._max_payload_bytes:
            raise LocalProtocolError(
                f"UDP packet of {len(packet.payload)} bytes exceeds the limit of "
                f"{self._max_payload_bytes} bytes (chisel's largest UDP packet)"
            )
        try:
            src = packet.src.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"UDP source {packet.src!r} is not encodable") from None
        body = bytearray(_int(_TYPE_ID))
        previous = -1
        for number, value in enumerate((src, packet.payload)):
            if value:  # gob leaves zero values out
                body += _uint(number - previous) + _string(value)
                previous = number
        body += b"\x00"
        value_message = _message(bytes(body))
        if self._defined:
            return value_message
        self._defined = True
        return _DEFINITION + value_message


# --- decoding ----------------------------------------------------------------


class _Reader:
    """Reads gob primitives from one complete message."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, count: int) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise GobError("gob message ends in the middle of a value")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self) -> int:
        first = self._take(1)[0]
        if first < 0x80:
            return first
        count = 0x100 - first
        if count > _UINT_MAX_BYTES:
            raise GobError(f"gob integer claims {count} bytes (at most {_UINT_MAX_BYTES})")
        return int.from_bytes(self._take(count), "big")

    def signed(self) -> int:
        folded = self.uint()
        return ~(folded >> 1) if folded & 1 else folded >> 1

    def blob(self, limit: int, what: str) -> bytes:
        length = self.uint()
        if length > limit:
            raise GobError(f"{what} of {length} bytes exceeds the limit of {limit} bytes")
        return self._take(length)

    def name(self) -> str:
        return self.blob(_MAX_NAME_BYTES, "gob type or field name").decode("utf-8", "replace")

    def fields(self, count: int, what: str) -> Iterator[int]:
        """Yield the field numbers of one struct value up to its closing 0."""
        number = -1
        while delta := self.uint():
            number += delta
            if number >= count:
                raise GobError(f"gob {what} has field number {number}; it has {count} fields")
            yield number

    def end(self) -> None:
        if self._pos != len(self._data):
            raise GobError(f"{len(self._data) - self._pos} stray bytes after a gob value")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type_id: int


def _read_definition(reader: _Reader) -> list[_Field]:
    """Read a ``wireType`` that must describe a struct; return its fields."""
    fields: list[_Field] | None = None
    for number in reader.fields(_WIRE_TYPE_FIELDS, "type definition"):
        if number != _STRUCT_T:
            raise GobError(
                "gob type definition is not a struct; a UDP channel carries "
                "udpPacket{Src string; Payload []byte}"
            )
        fields = []
        for part in reader.fields(2, "struct type"):
            if part == 0:  # CommonType{Name, Id}: neither matters to us
                for common in reader.fields(2, "type name"):
                    if common == 0:
                        reader.name()
                    else:
                        reader.signed()
                continue
            count = reader.uint()
            if count > _MAX_STRUCT_FIELDS:
                raise GobError(f"gob struct has {count} fields (at most {_MAX_STRUCT_FIELDS})")
            for _ in range(count):
                name, type_id = "", 0
                for item in reader.fields(2, "struct field"):
                    if item == 0:
                        name = reader.name()
                    else:
                        type_id = reader.signed()
                fields.append(_Field(name, type_id))
    if fields is None:
        raise GobError("empty gob type definition")
    return fields


def _check_layout(fields: list[_Field]) -> None:
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise GobError(f"gob struct repeats a field name: {names}")
    if "Src" not in names and "Payload" not in names:
        raise GobError(f"gob struct with fields {names} has neither Src nor Payload")
    for field in fields:
        wanted = {"Src": _STRING, "Payload": _BYTES}.get(field.name)
        if wanted is not None and field.type_id != wanted:
            kind = "string" if wanted == _STRING else "[]byte"
            raise GobError(
                f"gob field {field.name!r} has type id {field.type_id}; udpPacket needs {kind}"
            )
        if not _BOOL <= field.type_id <= _COMPLEX:
            raise GobError(
                f"gob field {field.name!r} has type id {field.type_id}, not a basic type; "
                "a UDP channel carries udpPacket{Src string; Payload []byte}"
            )


class GobDecoder:
    """Incremental decoder of one channel's gob stream.

    Feed it bytes as they arrive, in chunks of any size; it returns the
    packets completed so far and keeps a partial message for the next call.

    Args:
        max_message_bytes: largest gob message accepted, checked as soon as
            its length prefix arrives, so a peer cannot make us buffer more.
        max_payload_bytes: largest datagram (chisel's is 9012 bytes).
        max_src_bytes: longest ``Src`` address.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_src_bytes: int = MAX_SRC_BYTES,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._max_payload_bytes = max_payload_bytes
        self._max_src_bytes = max_src_bytes
        self._buffer = bytearray()
        self._type_id: int | None = None
        self._fields: list[_Field] = []
        self._failure: str | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete message held back; non-zero at EOF is a cut stream."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[UdpPacket]:
        """Add received bytes; return the packets they complete, in order.

        Raises:
            GobError: the stream is malformed, defines a type other than a
                udpPacket, or exceeds a limit. The stream cannot be resumed:
                packets completed by the same call are lost and later calls
                raise again.
        """
        if self._failure is not None:
            raise GobError(f"gob stream already failed: {self._failure}")
        self._buffer += data
        packets: list[UdpPacket] = []
        try:
            while (message := self._next_message()) is not None:
                packet = self._handle(message)
                if packet is not None:
                    packets.append(packet)
        except GobError as exc:
            self._failure = str(exc)
            self._buffer.clear()
            raise
        return packets

    def _next_message(self) -> bytes | None:
        buffer = self._buffer
        if not buffer:
            return None
        first = buffer[0]
        prefix = 1
        length = first
        if first >= 0x80:
            count = 0x100 - first
            if count > _UINT_MAX_BYTES:
                raise GobError(f"gob message length claims {count} bytes")
            if len(buffer) < 1 + count:
                return None
            prefix += count
            length = int.from_bytes(buffer[1:prefix], "big")
        if length == 0:
            raise GobError("empty gob message")
        if length > self._max_message_bytes:
            raise GobError(
                f"gob message of {length} bytes exceeds the limit of {self._max_message_bytes}"
            )
        end = prefix + length
        if len(buffer) < end:
            return None
        message = bytes(buffer[prefix:end])
        del buffer[:end]
        return message

    def _handle(self, message: bytes) -> UdpPacket | None:
        reader = _Reader(message)
        type_id = reader.signed()
        if type_id < 0:
            self._define(-type_id, reader)
            reader.end()
            return None
        if type_id != self._type_id:
            raise GobError(f"gob value of undefined type id {type_id}")
        packet = self._read_value(reader)
        reader.end()
        return packet

    def _define(self, type_id: int, reader: _Reader) -> None:
        if self._type_id is not None:
            raise GobError(
                f"second gob type definition (id {type_id}); a UDP channel defines only udpPacket"
            )
        if type_id < _FIRST_USER_TYPE_ID:
            raise GobError(f"gob type definition redefines predeclared type id {type_id}")
        fields = _read_definition(reader)
        _check_layout(fields)
        self._type_id, self._fields = type_id, fields

    def _read_value(self, reader: _Reader) -> UdpPacket:
        src, payload = b"", b""
        for number in reader.fields(len(self._fields), "udpPacket"):
            field = self._fields[number]
            if field.name == "Src":
                src = reader.blob(self._max_src_bytes, "UDP source address")
            elif field.name == "Payload":
                payload = reader.blob(self._max_payload_bytes, "UDP packet")
            elif field.type_id in (_BYTES, _STRING):
                reader.blob(self._max_message_bytes, field.name)
            else:  # bool, int, uint and float are one integer; complex is two
                reader.uint()
                if field.type_id == _COMPLEX:
                    reader.uint()
        return UdpPacket(src.decode("utf-8", "surrogateescape"), payload)
