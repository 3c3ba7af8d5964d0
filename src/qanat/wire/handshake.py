"""Names and formats of the chisel-v3 handshake, as observed from outsystemscc.

Only constants and small pure helpers: the HTTP upgrade (path, query, headers),
the SSH version lines, the channel type and the keepalive request names.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlencode

SUBPROTOCOL = "chisel-v3"
SERVER_VERSION = b"SSH-chisel-v3-server"
CLIENT_VERSION = b"SSH-chisel-v3-client"
CHANNEL_TYPE = b"chisel"
CONFIG_REQUEST = "config"
PING_REQUEST = "ping"
PONG_PAYLOAD = b"pong"
TOKEN_HEADER = "token"  # noqa: S105 - a header name, not a secret
#: The version string outsystemscc sends in ``config``; we send our own.
OUTSYSTEMSCC_VERSION = "0.0.0-src"
#: Seconds the gateway waits for the ``config`` request after SSH auth.
CONFIG_TIMEOUT_S = 10.0


def new_client_id() -> str:
    """A random 9-digit id, sent as ``id=`` once per process start."""
    return str(100_000_000 + secrets.randbelow(900_000_000))


def tunnel_query(client_id: str, ports: Sequence[str]) -> str:
    """The upgrade query string: ``id=868575457&ports=18083,18084``."""
    return urlencode({"id": client_id, "ports": ",".join(ports)}, safe=",")


def parse_tunnel_query(query: str) -> tuple[str, tuple[str, ...]]:
    """Read ``id`` and ``ports`` from an upgrade query; missing ones are empty."""
    values: Mapping[str, list[str]] = parse_qs(query, keep_blank_values=True)
    client_id = values.get("id", [""])[0][:32]
    ports = tuple(p for p in values.get("ports", [""])[0].split(",") if p)[:1000]
    return client_id, ports
