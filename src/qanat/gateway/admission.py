"""Whether a tunnel upgrade is let in: one pure decision, tested as a table.

:func:`admit` takes what the front door read (a :class:`TunnelRequest`,
the stage the address names, the peer) plus the limiter state and the
time, and returns :class:`Admitted` or :class:`Refused` with everything
the front door then does: the status, body and headers to answer, the log
line and the metric reason. It does no I/O; the front door wraps it in a
few lines (parse the head, call ``admit``, answer or upgrade). Order of the
checks, each cheaper than the next and none revealing more than it must:

1. subprotocol ``chisel-v3`` offered (400 otherwise);
2. the token: unknown address and wrong token get the same 401 (429 once
   that source has failed too often for that address, or everyone in all:
   see qanat.gateway.tokenlimit); only a valid token learns that its stage
   is inactive (403) or renewed (401). A valid token is never limited, so
   nobody's failures keep a real connector out;
3. the ``X-Qanat-Connector-Id`` header is well-formed (400);
4. the connector is not flapping (429 with Retry-After).

Limiter state is an explicit input (``limiters``), keyed by (source,
address) and globally (tokens) and by connector key (flaps). The source is
the client a trusted proxy names, when there is one (the front door's job).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from qanat.gateway.context import Limiters
from qanat.gateway.stages import StageConfig, TokenVerdict, check_token
from qanat.wire.handshake import IDENTITY_HEADER, SUBPROTOCOL, parse_tunnel_query
from qanat.wire.handshake import valid_connector_id as _valid_id
from qanat.wire.tokens import MAX_TOKEN_CHARS


@dataclass(frozen=True, slots=True)
class ConnectorInfo:
    """What the connector told us about itself during the upgrade."""

    client_id: str  # the per-process session id (``?id=``)
    peer: str
    user_agent: str
    ports: tuple[str, ...]
    #: The X-Qanat-Connector-Id header ("" from stock connectors).
    identity: str = ""

    @property
    def source(self) -> str:
        return self.peer.rsplit(":", 1)[0]


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    """The parts of an upgrade request admission looks at."""

    query: str
    subprotocols: tuple[str, ...]
    tokens: tuple[str, ...]
    identities: tuple[str, ...]
    user_agent: str = ""
    #: A token header longer than any token was dropped before parsing.
    oversized_token: bool = False
    #: The address in the path (``sg_<uuid>``), for the operator's log.
    address_id: str = ""


@dataclass(frozen=True, slots=True)
class Peer:
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Admitted:
    stage: StageConfig
    info: ConnectorInfo
    #: The key the flap guard counts this connector under.
    flap_key: str


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    body: bytes
    log: str
    level: int = logging.INFO
    #: Token failure reason for the metric, or None when this is no token failure.
    metric: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _short(ports: tuple[str, ...]) -> str:
    """The declared ports as a bounded key (a hash when the list is long)."""
    text = ",".join(ports)
    return text if len(text) <= 64 else hashlib.sha256(text.encode()).hexdigest()[:16]


def _refusal_words(verdict: TokenVerdict, stage: StageConfig | None, had_token: bool) -> str:
    """Why a tunnel request was refused, in words for the gateway's log."""
    if stage is None:
        return "no stage has this address (unknown or deleted); token not checked"
    if verdict is TokenVerdict.RENEWED:
        return f"the token is an old one of stage {stage.key}, renewed since"
    if verdict is TokenVerdict.INACTIVE:
        return f"stage {stage.key} is inactive"
    if not had_token:
        return "no token header"
    return "wrong token (not a token of this address)"


def _token_refusal(
    verdict: TokenVerdict,
    stage: StageConfig | None,
    had_token: bool,
    peer: Peer,
    address_id: str,
) -> Refused:
    if verdict is TokenVerdict.RENEWED:
        body = b"token rejected: this token was renewed; use the new token from the portal\n"
        status = 401
    elif verdict is TokenVerdict.INACTIVE:
        body = b"private gateway of this stage is inactive; activate it in the portal\n"
        status = 403
    else:
        body = (
            b"token rejected: check the token header\n"
            if had_token
            else b'token missing: send it as --header "token: <token>"\n'
        )
        status = 401
    reason = verdict.value if had_token or verdict is not TokenVerdict.BAD else "missing"
    # The answer is the same for an unknown address and a wrong token (no
    # probing for addresses); the operator's log tells them apart.
    return Refused(
        status,
        body,
        f"{peer}: tunnel refused for address {address_id}: "
        + _refusal_words(verdict, stage, had_token),
        logging.WARNING,
        metric=reason,
    )


def admit(
    request: TunnelRequest,
    stage: StageConfig | None,
    peer: Peer,
    now: float,
    limiters: Limiters,
) -> Admitted | Refused:
    """Decide one tunnel upgrade (see the module docstring for the order).

    Records what it decides in ``limiters`` (a failed token, a refused
    flapping upgrade); the successful connect is counted by the caller after
    the 101 (``limiters.flaps.connected``). Never raises.
    """
    offered = tuple(p.strip() for p in ",".join(request.subprotocols).split(","))
    if SUBPROTOCOL not in offered:
        return Refused(
            400,
            b"not a tunnel request: Sec-WebSocket-Protocol must offer chisel-v3\n",
            f"{peer}: upgrade without the chisel-v3 subprotocol; answered 400",
        )
    source = peer.address
    token = request.tokens[0] if len(request.tokens) == 1 else ""
    if len(token) > MAX_TOKEN_CHARS:
        token = ""
    verdict = check_token(stage, token) if stage is not None else TokenVerdict.BAD
    if verdict is not TokenVerdict.OK:
        if verdict is TokenVerdict.BAD and limiters.tokens.refuse_failure(
            source, request.address_id, now
        ):
            return Refused(
                429,
                b"too many failed token attempts; retry later\n",
                f"{peer}: token attempts rate-limited",
                logging.WARNING,
                metric="rate_limited",
                headers=(("Retry-After", "60"),),
            )
        had_token = bool(request.tokens) or request.oversized_token
        return _token_refusal(verdict, stage, had_token, peer, request.address_id)
    assert stage is not None
    identities = request.identities
    identity = identities[0].strip() if identities else ""
    if len(identities) > 1 or (identities and not _valid_id(identity)):
        return Refused(
            400,
            f"{IDENTITY_HEADER} must be given once, 1-64 characters of "
            "A-Z a-z 0-9 . _ : @ -\n".encode(),
            f"{peer}: malformed {IDENTITY_HEADER}; answered 400",
        )
    client_id, ports = parse_tunnel_query(request.query)
    flap_key = f"{stage.key}/" + (identity or f"{source} ports={_short(ports)}")
    flap = limiters.flaps.check(flap_key, now)
    if not flap.allowed:
        held = limiters.flap_log.allow(flap_key)
        return Refused(
            429,
            b"this connector reconnects too often; retry after the time in Retry-After\n",
            ""
            if held is None
            else (
                f"{peer}: connector {identity or f'from {source}'} backed off (flapping, "
                f"strike {flap.strike}): upgrade answered 429, retry after "
                f"{flap.retry_after_header}s ({flap.refused} refused in this back-off)"
            ),
            logging.WARNING,
            headers=(("Retry-After", flap.retry_after_header),),
        )
    info = ConnectorInfo(
        client_id=client_id,
        peer=str(peer),
        user_agent=request.user_agent[:200],
        ports=ports,
        identity=identity,
    )
    return Admitted(stage, info, flap_key)
