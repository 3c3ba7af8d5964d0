"""``describe@qanat``: a connector describes the endpoints it serves (pure).

qanat-to-qanat only. A connector sends these SSH global requests (want-reply)
after ``config``, and only to a gateway whose 101 answer listed the
``describe`` feature (``X-Qanat-Features``): a stock chisel server never sees
one (it would never answer, and global replies are matched in order).

One request per piece: an endpoint's description travels with the first
piece of its OpenAPI document; a document larger than one piece follows in
more requests (SSH packets are small: chisel and OpenSSH accept about 32 KiB).
Each payload is a UTF-8 JSON object::

    {"port": 8081, "description": "Orders API", "openapi": "<text or piece>",
     "more": false}

``openapi`` is null when there is no document. The gateway answers each
request: success, or failure with a text saying why.

Raises (the decoder): :class:`~qanat.errors.RemoteProtocolError` for any
malformed or oversized payload, never anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from qanat.errors import RemoteProtocolError

DESCRIBE_REQUEST = "describe@qanat"
FEATURE_DESCRIBE = "describe"
#: Text of the document per request (JSON escaping may grow it a little).
PIECE_CHARS = 16_000
MAX_DESCRIPTION_CHARS = 500
MAX_PAYLOAD_BYTES = 4 * PIECE_CHARS + 2048


@dataclass(frozen=True, slots=True)
class Declaration:
    """What a connector says about one of its ports."""

    port: int
    description: str
    openapi: str | None = field(default=None, repr=False)


def encode(declaration: Declaration, piece_chars: int = PIECE_CHARS) -> Iterator[bytes]:
    """The payloads of the requests that carry ``declaration``, in order."""
    doc = declaration.openapi
    pieces = [doc[i : i + piece_chars] for i in range(0, len(doc), piece_chars)] if doc else []
    if not pieces:
        yield _dump(declaration.port, declaration.description, None, more=False)
        return
    for index, piece in enumerate(pieces):
        description = declaration.description if index == 0 else None
        yield _dump(declaration.port, description, piece, more=index < len(pieces) - 1)


def _dump(port: int, description: str | None, piece: str | None, *, more: bool) -> bytes:
    doc: dict[str, object] = {"port": port, "openapi": piece, "more": more}
    if description is not None:
        doc["description"] = description
    return json.dumps(doc, separators=(",", ":")).encode()


class Assembler:
    """Puts the pieces of one tunnel's declarations back together.

    Args:
        max_document_chars: the largest document accepted (the portal's limit).
        max_ports: how many ports one tunnel may describe.
    """

    def __init__(self, *, max_document_chars: int, max_ports: int = 100) -> None:
        self._max_document = max_document_chars
        self._max_ports = max_ports
        self._open: dict[int, tuple[str, list[str], int]] = {}
        self._done: set[int] = set()

    def feed(self, payload: bytes) -> Declaration | None:
        """One request's payload; the declaration once its last piece arrived.

        Raises:
            RemoteProtocolError: malformed, out of order, or over a limit.
        """
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise RemoteProtocolError(
                f"describe request of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}"
            )
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RemoteProtocolError("describe request is not UTF-8 JSON") from None
        if not isinstance(doc, dict):
            raise RemoteProtocolError("describe request is not a JSON object")
        port, piece, more = doc.get("port"), doc.get("openapi"), doc.get("more", False)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise RemoteProtocolError(f"describe request names no valid port: {port!r}")
        if piece is not None and not isinstance(piece, str):
            raise RemoteProtocolError("describe request: 'openapi' must be a string or null")
        if not isinstance(more, bool):
            raise RemoteProtocolError("describe request: 'more' must be true or false")
        started = self._open.pop(port, None)
        if started is None:
            description = doc.get("description")
            if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
                raise RemoteProtocolError(
                    f"describe request for port {port}: 'description' must be a string of"
                    f" at most {MAX_DESCRIPTION_CHARS} characters"
                )
            if port not in self._done and len(self._done) >= self._max_ports:
                raise RemoteProtocolError(
                    f"a connector may describe at most {self._max_ports} ports"
                )
            started = (description, [], 0)
        description, pieces, size = started
        if piece is not None:
            size += len(piece)
            if size > self._max_document:
                raise RemoteProtocolError(
                    f"the OpenAPI document for port {port} is over {self._max_document} characters"
                )
            pieces.append(piece)
        if more:
            self._open[port] = (description, pieces, size)
            return None
        self._done.add(port)
        return Declaration(port, description, "".join(pieces) if pieces else None)
