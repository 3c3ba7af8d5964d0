"""The node link's handshake, as bytes: pure functions, no I/O.

One link connection carries one app connection from the node that accepted
it (the *client* node) to a node holding a connector for the port (the
*serving* node). Before any app byte, one line each way::

    client -> serving   QLINK1 {"t": <unix ms>, "n": "<nonce hex>", "from": "<node>",
                                "stage": "<stage key>", "port": <port>, "mac": "<hex>"
                                [, "kind": "udp"]}\\n
    serving -> client   OK <mac hex>\\n            (a connector opened the channel)
                        NO <mac hex> <reason>\\n   (none could; the client tries elsewhere)

then raw bytes both ways, half-close and back-pressure included (TCP's own).

A request with ``"kind": "udp"`` asks for a stage's UDP endpoint instead: after
``OK`` the connection carries the same gob stream of ``udpPacket{Src,
Payload}`` a connector's UDP channel carries (:mod:`qanat.wire.gob`, each
message length-prefixed and bounded by the UDP payload limit), for all the
client node's flows to that port. ``kind`` is covered by the MAC; a request
without it is a TCP one (and signed as before).

``mac`` is HMAC-SHA256 with the cluster secret over the request's fields
(client side), and over ``OK|<nonce>`` or ``NO|<nonce>|<reason>`` (serving
side), so each side proves it knows the secret: a connection without it is
refused before anything is opened, and a client never splices an app to
something that is not a node. Replays are refused: the request's time must
be within :data:`WINDOW_S` of the serving node's clock and its nonce unseen
within that window (:class:`NonceCache`). The handshake costs the client
one round trip plus the channel open; nothing is encrypted (app connections
to ``secure-gateway:<port>`` are plain TCP, too): keep the link address on
the nodes' private network, never where apps or connectors reach it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass

MAGIC = b"QLINK1 "
#: Longest handshake line either side accepts (the request is ~300 bytes).
MAX_LINE = 4096
#: How far a request's clock may be from the serving node's, either way.
WINDOW_S = 30.0
#: What a link connection can carry.
KINDS = ("tcp", "udp")
#: Shortest cluster secret accepted.
MIN_SECRET_BYTES = 16


class LinkRefused(Exception):
    """A handshake line is malformed, forged, replayed or a refusal."""


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """What a client node asks for: a channel to ``port`` of ``stage``."""

    node: str
    stage: str
    port: int
    nonce: str
    time_ms: int
    kind: str = "tcp"


def new_nonce() -> str:
    return secrets.token_hex(16)


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def _request_mac(
    secret: bytes, time_ms: int, nonce: str, node: str, stage: str, port: int, kind: str
) -> str:
    extra = () if kind == "tcp" else (kind,)
    return _mac(secret, "QLINK1", str(time_ms), nonce, node, stage, str(port), *extra)


def request_line(
    secret: bytes,
    *,
    node: str,
    stage: str,
    port: int,
    now_ms: int,
    nonce: str,
    kind: str = "tcp",
) -> bytes:
    """The client's first line."""
    body: dict[str, object] = {
        "t": now_ms,
        "n": nonce,
        "from": node,
        "stage": stage,
        "port": port,
        "mac": _request_mac(secret, now_ms, nonce, node, stage, port, kind),
    }
    if kind != "tcp":
        body["kind"] = kind
    return MAGIC + json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse_request(line: bytes, secret: bytes, now_ms: int, seen: NonceCache) -> LinkRequest:
    """Check the client's first line (without its ``\\n``).

    Raises:
        LinkRefused: not a link request, bad MAC, too old or replayed.
    """
    if not line.startswith(MAGIC):
        raise LinkRefused("not a qanat node link request")
    try:
        body = json.loads(line[len(MAGIC) :])
        time_ms, nonce = int(body["t"]), str(body["n"])
        node, stage, port = str(body["from"]), str(body["stage"]), int(body["port"])
        mac, kind = str(body["mac"]), str(body.get("kind", "tcp"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LinkRefused("malformed node link request") from None
    if kind not in KINDS:
        raise LinkRefused(f"node link request for unknown kind {kind[:20]!r}")
    if not hmac.compare_digest(mac, _request_mac(secret, time_ms, nonce, node, stage, port, kind)):
        raise LinkRefused("node link request not signed with this cluster's secret")
    if abs(now_ms - time_ms) > WINDOW_S * 1000:
        raise LinkRefused(
            f"node link request from {node} is {abs(now_ms - time_ms) / 1000:.0f}s off this "
            f"node's clock (more than {WINDOW_S:g}s): synchronise the clocks (NTP)"
        )
    if not seen.add(nonce, now_ms):
        raise LinkRefused(f"node link request from {node} replayed")
    return LinkRequest(node, stage, port, nonce, time_ms, kind)


def reply_line(secret: bytes, nonce: str, reason: str | None) -> bytes:
    """The serving node's answer: ``reason`` None means the channel is open."""
    if reason is None:
        return f"OK {_mac(secret, 'OK', nonce)}\n".encode()
    reason = " ".join(reason.split())[:1000]
    return f"NO {_mac(secret, 'NO', nonce, reason)} {reason}\n".encode()


def parse_reply(line: bytes, secret: bytes, nonce: str) -> str | None:
    """The serving node's answer: None when open, else its reason.

    Raises:
        LinkRefused: the answer is malformed or not from a node of this cluster.
    """
    text = line.decode(errors="replace")
    verdict, _, rest = text.partition(" ")
    mac, _, reason = rest.partition(" ")
    if verdict == "OK" and not reason:
        expected = _mac(secret, "OK", nonce)
    elif verdict == "NO":
        expected = _mac(secret, "NO", nonce, reason)
    else:
        raise LinkRefused("malformed node link answer")
    if not hmac.compare_digest(mac, expected):
        raise LinkRefused("node link answer not signed with this cluster's secret")
    return None if verdict == "OK" else reason


class NonceCache:
    """Nonces seen within the replay window, bounded in number.

    Args:
        max_entries: when full, the oldest entries are forgotten first;
            they are older than the window anyway at any realistic rate
            (1e5 entries = 3,300 link connections per second for 30 s).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, now_ms: int) -> bool:
        """Record ``nonce``; False if it was seen within the window."""
        horizon = now_ms - int(2 * WINDOW_S * 1000)
        seen = self._seen
        while seen:
            oldest, at = next(iter(seen.items()))
            if at >= horizon and len(seen) < self._max:
                break
            del seen[oldest]
        if nonce in seen:
            return False
        seen[nonce] = now_ms
        return True


def check_secret(secret: bytes, where: str) -> bytes:
    """The cluster secret, or a ConfigError-worthy text via ValueError."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{where}: the cluster secret has {len(secret)} bytes, at least "
            f"{MIN_SECRET_BYTES} are needed; make one with: openssl rand -hex 32"
        )
    return secret
