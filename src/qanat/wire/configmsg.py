"""The ``config`` global request: the connector's declared remotes as JSON.

On the wire (field order as Go's encoder writes it)::

    {"Version":"0.0.0-src","Remotes":[{"LocalHost":"0.0.0.0","LocalPort":"18082",
     "LocalProto":"tcp","RemoteHost":"127.0.0.1","RemotePort":"18000",
     "RemoteProto":"tcp","Socks":false,"Reverse":true,"Stdio":false}]}

Decoding is defensive: size and count limits first, then types, then each
remote's fields; ports must be what Go's ``strconv.Atoi`` reads (see
:func:`~qanat.wire.remotes.port_problem`) and come out canonical (``+08081``
is ``8081``). Every failure is a :class:`~qanat.errors.RemoteProtocolError`
whose text can go straight back to the client in the request-failure payload.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qanat.errors import RemoteProtocolError
from qanat.wire.remotes import Remote, canonical_port, port_problem

#: Largest payload read (a remote is ~200 bytes; 1 MiB leaves ample room).
MAX_CONFIG_BYTES = 1 << 20
#: Most remotes one connector may declare.
MAX_REMOTES = 1000

_STR_FIELDS = ("LocalHost", "LocalPort", "LocalProto", "RemoteHost", "RemotePort", "RemoteProto")
_BOOL_FIELDS = ("Socks", "Reverse", "Stdio")
_PORT_FIELDS = ("LocalPort", "RemotePort")


@dataclass(frozen=True, slots=True)
class ConfigMessage:
    """A decoded ``config`` request."""

    version: str
    remotes: tuple[Remote, ...]


def encode_config(version: str, remotes: Sequence[Remote]) -> bytes:
    """Encode the ``config`` payload exactly as a Go chisel client does."""
    doc = {
        "Version": version,
        "Remotes": [
            {
                "LocalHost": r.local_host,
                "LocalPort": r.local_port,
                "LocalProto": r.local_proto,
                "RemoteHost": r.remote_host,
                "RemotePort": r.remote_port,
                "RemoteProto": r.remote_proto,
                "Socks": r.socks,
                "Reverse": r.reverse,
                "Stdio": r.stdio,
            }
            for r in remotes
        ],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _remote_from(index: int, item: Any) -> Remote:
    if not isinstance(item, dict):
        raise RemoteProtocolError(f"config: remote #{index} is not an object")
    values: dict[str, Any] = {}
    for name in _STR_FIELDS:
        value = item.get(name, "")
        if not isinstance(value, str) or len(value) > 512:
            raise RemoteProtocolError(f"config: remote #{index} field {name} is not a short string")
        values[name] = value
    for name in _BOOL_FIELDS:
        value = item.get(name, False)
        if not isinstance(value, bool):
            raise RemoteProtocolError(f"config: remote #{index} field {name} is not a boolean")
        values[name] = value
    for name in _PORT_FIELDS:
        # Empty is left to the gateway's checks (socks and stdio remotes have
        # empty ports, and are refused there with their own reason).
        if values[name]:
            problem = port_problem(values[name])
            if problem is not None:
                raise RemoteProtocolError(
                    f"config: remote #{index} {name} {values[name]!r} {problem}"
                )
            values[name] = canonical_port(values[name])
    return Remote(
        local_host=values["LocalHost"],
        local_port=values["LocalPort"],
        local_proto=values["LocalProto"] or "tcp",
        remote_host=values["RemoteHost"],
        remote_port=values["RemotePort"],
        remote_proto=values["RemoteProto"] or "tcp",
        socks=values["Socks"],
        reverse=values["Reverse"],
        stdio=values["Stdio"],
    )


def decode_config(
    payload: bytes, *, max_bytes: int = MAX_CONFIG_BYTES, max_remotes: int = MAX_REMOTES
) -> ConfigMessage:
    """Decode a ``config`` payload.

    Raises:
        RemoteProtocolError: the payload is too large, not JSON, or not the
            expected shape; the message says which.
    """
    if len(payload) > max_bytes:
        raise RemoteProtocolError(f"config: {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"config: not valid JSON ({exc})") from None
    except RecursionError:
        # The C scanner recurses once per nested array or object, so
        # "[[[[..." well inside the size limit would escape as RecursionError.
        raise RemoteProtocolError("config: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError("config: expected a JSON object")
    version = doc.get("Version", "")
    if not isinstance(version, str) or len(version) > 128:
        raise RemoteProtocolError("config: Version is not a short string")
    items = doc.get("Remotes")
    if not isinstance(items, list):
        raise RemoteProtocolError("config: Remotes is not a list")
    if len(items) > max_remotes:
        raise RemoteProtocolError(
            f"config: {len(items)} remotes exceeds the limit of {max_remotes} per connector; "
            "split the remotes over several connectors"
        )
    return ConfigMessage(version, tuple(_remote_from(i, item) for i, item in enumerate(items)))
