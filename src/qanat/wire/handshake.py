"""Names and formats of the chisel-v3 handshake, as observed from outsystemscc.

Only constants and small pure helpers: the HTTP upgrade (path, query, headers),
the SSH version lines, the channel type and the keepalive request names.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlencode

from qanat.wire.remotes import Remote

SUBPROTOCOL = "chisel-v3"
SERVER_VERSION = b"SSH-chisel-v3-server"
CLIENT_VERSION = b"SSH-chisel-v3-client"
CHANNEL_TYPE = b"chisel"
CONFIG_REQUEST = "config"
PING_REQUEST = "ping"
PONG_PAYLOAD = b"pong"
TOKEN_HEADER = "token"  # noqa: S105 -- a header name, not a secret
#: The version string outsystemscc sends in ``config``; we send our own.
OUTSYSTEMSCC_VERSION = "0.0.0-src"
#: Seconds the gateway waits for the ``config`` request after SSH auth.
CONFIG_TIMEOUT_S = 10.0

# qanat-to-qanat extras, all ignored by stock chisel peers:
#: Upgrade request header: the connector's stable identity (``--id``, or
#: derived from token, remotes and host name). A restarted connector with
#: the same identity replaces its own stale session.
IDENTITY_HEADER = "X-Qanat-Connector-Id"
#: 101 answer header of a qanat gateway: comma-separated extras it understands.
FEATURES_HEADER = "X-Qanat-Features"
FEATURE_DRAIN = "drain"
#: The gateway takes a failed dial back: a connector may confirm a channel
#: before dialling its endpoint, marking the confirmation with
#: EARLY_OPEN_MARK, and report a failed dial with DIAL_FAILED_REQUEST; the
#: gateway then gives the app connection (what it sent included) to the next
#: connector, as if the open had been refused.
FEATURE_EARLY_OPEN = "early-open"
#: Channel-type specific data of such a confirmation (raw, not an SSH string).
EARLY_OPEN_MARK = b"early-open@qanat"
#: Channel request (connector -> gateway, no reply): the dial of a channel
#: confirmed early failed; nothing reached the endpoint. Payload: the reason.
DIAL_FAILED_REQUEST = "dial-failed@qanat"
#: SSH global request (connector -> gateway, want-reply): "no new channels".
DRAIN_REQUEST = "drain@qanat"

_CONNECTOR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}\Z")


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


def valid_connector_id(text: str) -> bool:
    """Whether ``text`` may be a connector identity (1-64 of ``A-Za-z0-9._:@-``)."""
    return _CONNECTOR_ID.match(text) is not None


def derive_connector_id(token: str, remotes: Sequence[Remote], host: str) -> str:
    """The default identity of a connector: same token, remotes and host, same id.

    Only a hash leaves the machine (the token cannot be recovered from it).
    """
    h = hashlib.sha256()
    h.update(hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest())
    for text in sorted(str(r) for r in remotes):
        h.update(b"\0" + text.encode("utf-8", "surrogateescape"))
    h.update(b"\0" + host.encode("utf-8", "surrogateescape"))
    return "h-" + h.hexdigest()[:16]


def parse_features(value: str) -> frozenset[str]:
    """``"drain, x"`` -> {"drain", "x"}."""
    return frozenset(p.strip().lower() for p in value.split(",") if p.strip())
