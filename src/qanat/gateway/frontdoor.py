"""The gateway's public listener: one HTTP request decides what a connection is.

For each accepted connection the front door reads the request line (bounded
in size and time) and routes:

- ``GET /sg_<id>`` is ours. Without an upgrade it is a status probe (or the
  address resolution outsystemscc does first) and gets a small JSON answer,
  or a 302 when a redirect is configured. With an upgrade it must ask for the
  ``chisel-v3`` subprotocol and present a valid ``token`` header, checked
  before the 101 answer; then the connection becomes a tunnel.
- ``GET /metrics``, ``/healthz``, ``/readyz`` go to :mod:`qanat.telemetry.httpd`.
- Anything else goes to the HTTP application when one is configured (the
  portal), otherwise gets 404.
- Bytes that are not HTTP get a 400 and the connection is closed.

Whether an upgrade is let in is decided by the pure
:func:`qanat.gateway.admission.admit`; this module is the I/O around it.
After the token check, a connector that opens tunnels in a tight loop is
answered 429 with Retry-After (see qanat.gateway.flapping). The 101 answer
carries ``X-Qanat-Features`` so a qanat connector knows it may use qanat's
extras (draining); stock clients ignore the header.

Token failures never say whether the address exists: an unknown address and
a wrong token get the same 401. Only a *valid* token learns that its stage is
inactive or that it was renewed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from qanat import __version__
from qanat.errors import HandshakeError
from qanat.gateway.admission import Admitted, Peer, TunnelRequest, admit
from qanat.gateway.context import GatewayContext, TunnelHost
from qanat.gateway.gated import DoorSettings, GatedDoor
from qanat.gateway.stages import StageConfig
from qanat.gateway.tunnel import Tunnel
from qanat.net.ssh import serve_tunnel
from qanat.net.websocket import ServerUpgrade, UpgradeRequest
from qanat.telemetry import httpd
from qanat.wire.describe import FEATURE_DESCRIBE
from qanat.wire.forwarded import client_address
from qanat.wire.handshake import (
    FEATURE_DRAIN,
    FEATURE_EARLY_OPEN,
    FEATURES_HEADER,
    IDENTITY_HEADER,
    TOKEN_HEADER,
)
from qanat.wire.tokens import MAX_TOKEN_CHARS

log = logging.getLogger("qanat.gateway.frontdoor")

_REQUEST_LINE = re.compile(rb"([A-Z]{3,10}) (\S{1,8192}) HTTP/1\.[01]\r?\Z")
_TUNNEL_PATH = re.compile(r"/(sg_[0-9a-f-]{36})/?\Z")

HttpFallback = Callable[[], asyncio.Protocol]


@dataclass(frozen=True, slots=True)
class Routes:
    """Where the front door sends what is not a tunnel."""

    ops: httpd.OpsRoutes
    #: The portal's protocol factory, when one is served on this address.
    fallback: Callable[[], HttpFallback | None] = lambda: None


def _drop_oversized_token(data: bytes) -> tuple[bytes, bool]:
    """Take token header lines longer than a token can be out of a request head.

    websockets refuses any header line over 8 KiB as a malformed request
    (400), but an oversized token is simply a wrong token: it must get the
    same 401 as any other, and count as a failed attempt. Returns the head
    without such lines (bytes after the head untouched) and whether any was
    dropped.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head, rest = (data, b"") if end < 0 else (data[: end + 2], data[end + 2 :])
    lines = head.split(b"\n")
    kept = [
        line
        for line in lines
        if len(line) <= MAX_TOKEN_CHARS + 16
        or line.partition(b":")[0].strip().lower() != TOKEN_HEADER.encode()
    ]
    if len(kept) == len(lines):
        return data, False
    return b"\n".join(kept) + rest, True


def tunnel_request(
    request: UpgradeRequest, oversized_token: bool, address_id: str = ""
) -> TunnelRequest:
    """What admission looks at, from the parsed upgrade request."""
    return TunnelRequest(
        query=request.path.partition("?")[2],
        subprotocols=tuple(request.get_all("Sec-WebSocket-Protocol")),
        tokens=tuple(request.get_all(TOKEN_HEADER)),
        identities=tuple(request.get_all(IDENTITY_HEADER)),
        user_agent=request.get("User-Agent"),
        oversized_token=oversized_token,
        address_id=address_id,
    )


class FrontDoor(GatedDoor):
    """Reads the first request of a connection and hands it to its owner."""

    def __init__(self, ctx: GatewayContext, host: TunnelHost, routes: Routes) -> None:
        settings = ctx.settings
        super().__init__(
            ctx.limiters.door,
            DoorSettings(
                settings.request_head_timeout_s,
                settings.idle_timeout_s,
                settings.max_request_head_bytes,
            ),
        )
        self.ctx = ctx
        self.host = host
        self.routes = routes
        self.peer_address = Peer("?", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer_address = Peer(str(peer[0]), int(peer[1])) if peer else Peer("?", 0)
        super().connection_made(transport)
        self.peer = str(self.peer_address) if peer else "?"

    def data_received(self, data: bytes) -> None:
        if self.routed:  # late bytes before the new protocol took over
            return
        self.buffer += data
        limit = self.ctx.settings.max_request_head_bytes
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > limit and not self._too_long():
                self._bad("request line too long or not HTTP")
            return
        match = _REQUEST_LINE.match(bytes(self.buffer[:end]))
        if match is None:
            if not self._too_long():
                self._bad("not an HTTP request")
            return
        method, target = match.group(1).decode(), match.group(2).decode("ascii", "replace")
        path = target.split("?", 1)[0]
        tunnel_path = _TUNNEL_PATH.match(path)
        # Every path waits for its complete head under the head deadline.
        if not self._head_complete():
            if len(self.buffer) > limit:
                self._bad("request head too large")
            return
        if method == "GET" and tunnel_path:
            self._route_done()
            self._tunnel_request(tunnel_path.group(1))
            return
        if path in httpd.OPS_PATHS:  # operations paths, before the portal
            self._route_done()
            assert self.transport is not None
            self._release()  # the responder answers once and closes
            httpd.hand_over(
                self.routes.ops,
                self.ctx.tasks.spawn,
                self.transport,
                bytes(self.buffer),
                self._client(self.buffer),
            )
            return
        factory = self.routes.fallback()
        if factory is None:
            self._route_done()
            self._respond(404, b"not found\n")
            return
        self._hand_to_http(factory)

    def _client(self, head: bytes | bytearray) -> str:
        """The client's address: the peer's, or (from a trusted proxy) the
        right-most untrusted X-Forwarded-For hop."""
        trusted = self.ctx.limiters.door.trusted
        if not trusted:
            return self.source
        values = [
            line.partition(b":")[2].decode("latin-1").strip()
            for line in bytes(head).split(b"\r\n\r\n", 1)[0].split(b"\n")[1:]
            if line.partition(b":")[0].strip().lower() == b"x-forwarded-for"
        ]
        return client_address(self.source, values, trusted)

    def _too_long(self) -> bool:
        """A tunnel upgrade whose URL is too long: almost always thousands of
        declared ports (the ``ports=`` query lists them all). Say so."""
        if not self.buffer.startswith(b"GET /sg_"):
            return False
        self._route_done()
        log.info("%s: tunnel request URL too long (thousands of ports?); answered 414", self.peer)
        self._respond(
            414,
            b"tunnel request URL too long: it lists every declared port, and a connector "
            b"may declare at most 1000 remotes; split them over several connectors\n",
        )
        return True

    # -- tunnel requests ------------------------------------------------------

    def _tunnel_request(self, address_id: str) -> None:
        tcp = self.transport
        assert tcp is not None
        ctx = self.ctx
        head, oversized_token = _drop_oversized_token(bytes(self.buffer))
        try:
            upgrade = ServerUpgrade(head, ctx.settings.max_frame_bytes)
        except HandshakeError as exc:
            self._bad(str(exc))
            return
        stage = ctx.stages.lookup(address_id)
        if "websocket" not in upgrade.request.get("Upgrade").lower():
            self._status_probe(stage)
            return
        request = tunnel_request(upgrade.request, oversized_token, address_id)
        now = time.monotonic()
        client = self._client(self.buffer)
        peer = self.peer_address if client == self.source else Peer(client, 0)
        decision = admit(request, stage, peer, now, ctx.limiters)
        if not isinstance(decision, Admitted):
            if decision.metric is not None:
                ctx.events.token_failure(decision.metric)
                kind = "unknown address" if stage is None else decision.metric
                self._note_refusal(client, kind, decision.log, decision.level)
            elif decision.log:
                log.log(decision.level, "%s", decision.log)
            self._respond(decision.status, decision.body, headers=dict(decision.headers))
            return
        features = [FEATURE_DRAIN, FEATURE_EARLY_OPEN]
        if self.host.describe_sink is not None:
            features.append(FEATURE_DESCRIBE)
        accepted, answer = upgrade.accept({FEATURES_HEADER: ",".join(features)})
        if not accepted:
            tcp.write(answer)
            tcp.close()
            return
        self._upgraded(decision, upgrade, answer, now)

    def _upgraded(
        self, admitted: Admitted, upgrade: ServerUpgrade, answer: bytes, now: float
    ) -> None:
        tcp = self.transport
        assert tcp is not None
        ctx = self.ctx
        info = admitted.info
        flaps = ctx.limiters.flaps
        strike = flaps.connected(admitted.flap_key, now, info.source)
        if not strike.allowed:
            log.warning(
                "%s: connector %s is flapping: more than %d tunnels within %gs; its next "
                "upgrades are answered 429 for %ss (strike %d)",
                self.peer,
                info.identity or f"from {info.source} (ports {','.join(info.ports) or '-'})",
                flaps.max_connects,
                flaps.window_s,
                strike.retry_after_header,
                strike.strike,
            )
        self._release()  # a tunnel now: proven by its token
        tcp.write(answer)
        settings = ctx.settings
        tunnel = Tunnel(
            ctx,
            self.host,
            admitted.stage,
            info,
            lambda hooks: serve_tunnel(
                lambda upper: upgrade.attach(tcp, upper),
                ctx.host_key,
                hooks,
                login_timeout_s=settings.setup_timeout_s,
                window_bytes=settings.ssh_window_bytes,
            ),
        )
        tunnel.log.info("tunnel upgrade accepted (%s)", info.user_agent or "no user agent")

    def _note_refusal(self, client: str, kind: str, line: str, level: int) -> None:
        """The first refusal of each kind in an interval is logged; the rest
        are summed up in one line when the interval ends."""
        door = self.ctx.limiters.door
        if door.tally.add(client, kind):
            log.log(level, "%s", line)
        door.noted()

    def _status_probe(self, stage: StageConfig | None) -> None:
        redirect = self.ctx.settings.redirect_url
        if stage is None:
            self._respond(404, b"not found\n")
            return
        if redirect:
            self._respond(
                302, b"", headers={"Location": redirect.rstrip("/") + "/" + stage.address_id}
            )
            return
        doc = {
            "service": "qanat-gateway",
            "version": __version__,
            "status": "active" if stage.active else "inactive",
            "time": int(time.time()),
        }
        self._respond(200, json.dumps(doc).encode() + b"\n", "application/json")
